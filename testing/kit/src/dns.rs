//! A tiny authoritative DNS server on loopback UDP, so that Portcullis's lookups run
//! through the real resolver against answers a test or benchmark chose: MX and A for
//! delivery, TXT (SPF, DKIM keys, DMARC) and PTR for mail authentication. It can be
//! silenced, as a server that stopped. Never a mock of the resolver: a server.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, MX, PTR, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// One answer the server gives.
#[derive(Clone)]
pub enum Answer {
    /// An MX record: preference and exchange.
    Mx(u16, &'static str),
    /// An A record.
    A(Ipv4Addr),
    /// A TXT record of these character-strings (each at most 255 octets).
    Txt(Vec<String>),
    /// A PTR record (under `in-addr.arpa`).
    Ptr(&'static str),
}

/// The zone: names (lower-case, no trailing dot) to records. A name not listed is NXDOMAIN;
/// a listed name without records of the asked type is an empty NOERROR.
pub struct Dns {
    /// Where it answers (UDP).
    pub addr: SocketAddr,
    /// Every question asked, as `name TYPE`, in order.
    pub queries: Arc<Mutex<Vec<String>>>,
    /// While set, queries go unanswered (a server that stopped).
    pub silent: Arc<AtomicBool>,
}

impl Dns {
    /// Starts a server for `zone` on a free loopback port, in a thread of its own.
    pub fn start(zone: &[(&'static str, Answer)]) -> Dns {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind dns");
        let addr = socket.local_addr().expect("dns addr");
        let mut table: HashMap<String, Vec<Answer>> = HashMap::new();
        for (name, answer) in zone {
            table.entry(name.to_string()).or_default().push(answer.clone());
        }
        let queries = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&queries);
        let silent = Arc::new(AtomicBool::new(false));
        let mute = Arc::clone(&silent);
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                if mute.load(Ordering::SeqCst) {
                    continue;
                }
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
                                    (Answer::Ptr(name), RecordType::PTR) => {
                                        RData::PTR(PTR(Name::from_ascii(name).expect("name")))
                                    }
                                    _ => continue,
                                };
                                response.add_answer(Record::from_rdata(q.name.clone(), 60, rdata));
                            }
                        }
                    }
                }
                if response.answers.is_empty() {
                    // A negative answer carries the zone's SOA, whose minimum says how long
                    // a resolver may remember it (RFC 2308), as a real server's does.
                    let soa = SOA::new(
                        Name::from_ascii("ns.test.").expect("name"),
                        Name::from_ascii("hostmaster.test.").expect("name"),
                        1,
                        3600,
                        600,
                        86400,
                        60,
                    );
                    response.add_authority(Record::from_rdata(Name::root(), 60, RData::SOA(soa)));
                }
                if let Ok(bytes) = response.to_vec() {
                    let _ = socket.send_to(&bytes, peer);
                }
            }
        });
        Dns {
            addr,
            queries,
            silent,
        }
    }
}
