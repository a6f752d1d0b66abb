//! A tiny authoritative DNS server on loopback UDP, so MX lookups run through the real
//! resolver against answers the test chose, and TXT records (DKIM keys) for verifiers.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, MX, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// One answer the server gives.
#[derive(Clone)]
pub enum Answer {
    Mx(u16, &'static str),
    A(Ipv4Addr),
    /// A TXT record of these character-strings (each at most 255 octets).
    Txt(Vec<String>),
}

/// The zone: names (lower-case, no trailing dot) to records. A name not listed is NXDOMAIN;
/// a listed name without records of the asked type is an empty NOERROR.
pub struct Dns {
    pub addr: SocketAddr,
    pub queries: Arc<Mutex<Vec<String>>>,
}

impl Dns {
    pub fn start(zone: &[(&'static str, Answer)]) -> Dns {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind dns");
        let addr = socket.local_addr().expect("dns addr");
        let mut table: HashMap<String, Vec<Answer>> = HashMap::new();
        for (name, answer) in zone {
            table.entry(name.to_string()).or_default().push(answer.clone());
        }
        let queries = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&queries);
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut response =
                    Message::new(query.metadata.id, MessageType::Response, query.metadata.op_code);
                response.metadata.authoritative = true;
                response.metadata.recursion_desired = query.metadata.recursion_desired;
                response.metadata.recursion_available = true;
                for q in &query.queries {
                    response.add_query(q.clone());
                    let name = q.name.to_ascii().trim_end_matches('.').to_ascii_lowercase();
                    log.lock().expect("lock").push(format!("{name} {}", q.query_type));
                    match table.get(&name) {
                        None => response.metadata.response_code = ResponseCode::NXDomain,
                        Some(answers) => {
                            for a in answers {
                                let rdata = match (a, q.query_type) {
                                    (Answer::Mx(pref, exchange), RecordType::MX) => {
                                        RData::MX(MX::new(*pref, Name::from_ascii(exchange).expect("name")))
                                    }
                                    (Answer::A(ip), RecordType::A) => RData::A(A(*ip)),
                                    (Answer::Txt(strings), RecordType::TXT) => {
                                        RData::TXT(TXT::new(strings.clone()))
                                    }
                                    _ => continue,
                                };
                                response.add_answer(Record::from_rdata(q.name.clone(), 60, rdata));
                            }
                        }
                    }
                }
                if let Ok(bytes) = response.to_vec() {
                    let _ = socket.send_to(&bytes, peer);
                }
            }
        });
        Dns { addr, queries }
    }
}
