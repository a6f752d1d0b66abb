//! What an operator may grant one plugin beyond the bytes of a message (contract 0.2.0):
//! DNS lookups through the host's resolver (`grant-dns`) and byte streams to listed
//! endpoints (`grant-connect`). Both are mediated here: a plugin never holds a socket the
//! host did not open for it, never reaches an endpoint that is not listed, and is held to a
//! lookup count and a byte count per call; everything it opened closes when the call ends
//! (its store is dropped), and every wait ends at the plugin's deadline (the call's future
//! is dropped).

use std::net::IpAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmtime::component::Resource;

use crate::bindings::virus::portcullis::filter::{connect, dns};
use crate::host::State;
pub use crate::spec::{DEFAULT_CONNECT_BYTES, DEFAULT_DNS_LOOKUPS, Endpoint, Grants};

/// The largest chunk one `read` returns.
const MAX_READ: u32 = 1 << 20;
/// Connections one call may hold open at once.
const MAX_CONNECTIONS: usize = 16;

/// What one call has used of its grants.
#[derive(Debug, Default)]
pub struct Usage {
    lookups: u32,
    bytes: u64,
    connections: usize,
}

/// What the host counts of capability use, per plugin: the daemon reads it for its metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Lookups answered (or failed) by the resolver.
    pub lookups: std::sync::atomic::AtomicU64,
    /// Connections opened.
    pub connections: std::sync::atomic::AtomicU64,
    /// Octets read and written.
    pub bytes: std::sync::atomic::AtomicU64,
    /// Uses refused: not granted, or over a limit.
    pub denied: std::sync::atomic::AtomicU64,
}

impl Counters {
    fn add(counter: &std::sync::atomic::AtomicU64, n: u64) {
        counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// A connection a plugin opened: a host-owned socket behind a resource handle.
pub struct Connection {
    stream: Stream,
}

impl State {
    fn denied(&self, why: String) -> String {
        Counters::add(&self.meta.counters.denied, 1);
        tracing::warn!(plugin = %self.meta.name, hash = %self.meta.hash, "capability refused: {why}");
        why
    }

    /// Counts `n` more octets against the call's byte limit.
    fn spend(&mut self, n: u64) -> Result<(), connect::ConnectError> {
        let limit = self.meta.grants.connect_bytes;
        if self.usage.bytes.saturating_add(n) > limit {
            return Err(connect::ConnectError::Denied(self.denied(format!(
                "over the limit of {limit} octets per call (connect-bytes)"
            ))));
        }
        self.usage.bytes += n;
        Counters::add(&self.meta.counters.bytes, n);
        Ok(())
    }

    fn connection(&mut self, this: &Resource<Connection>) -> Result<&mut Connection, connect::ConnectError> {
        self.table
            .get_mut(this)
            .map_err(|e| connect::ConnectError::Failed(e.to_string()))
    }
}

fn io_failed(what: &str, e: &std::io::Error) -> connect::ConnectError {
    connect::ConnectError::Failed(format!("{what}: {e}"))
}

impl connect::Host for State {
    async fn open(&mut self, endpoint: String) -> Result<Resource<Connection>, connect::ConnectError> {
        let wanted = match Endpoint::parse(&endpoint) {
            Ok(wanted) if self.meta.grants.connect.contains(&wanted) => wanted,
            _ => {
                let shown: String = endpoint.chars().take(200).collect();
                let why = format!(
                    "{} is not granted to this plugin (grant-connect)",
                    portcullis_smtp::escape::Escaped(&shown)
                );
                return Err(connect::ConnectError::Denied(self.denied(why)));
            }
        };
        if self.usage.connections >= MAX_CONNECTIONS {
            let why = format!("more than {MAX_CONNECTIONS} connections in one call");
            return Err(connect::ConnectError::Denied(self.denied(why)));
        }
        let stream = match &wanted {
            Endpoint::Tcp(address) => tokio::net::TcpStream::connect(address).await.map(|s| {
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
            Endpoint::Unix(path) => tokio::net::UnixStream::connect(path).await.map(Stream::Unix),
        }
        .map_err(|e| io_failed(&format!("cannot connect to {wanted}"), &e))?;
        self.usage.connections += 1;
        Counters::add(&self.meta.counters.connections, 1);
        self.table
            .push(Connection { stream })
            .map_err(|e| connect::ConnectError::Failed(e.to_string()))
    }
}

impl connect::HostConnection for State {
    async fn write(
        &mut self,
        this: Resource<Connection>,
        bytes: Vec<u8>,
    ) -> Result<(), connect::ConnectError> {
        self.spend(bytes.len() as u64)?;
        let written = match &mut self.connection(&this)?.stream {
            Stream::Tcp(s) => s.write_all(&bytes).await,
            Stream::Unix(s) => s.write_all(&bytes).await,
        };
        written.map_err(|e| io_failed("write", &e))
    }

    async fn read(&mut self, this: Resource<Connection>, max: u32) -> Result<Vec<u8>, connect::ConnectError> {
        let left = self.meta.grants.connect_bytes.saturating_sub(self.usage.bytes);
        let wanted = u64::from(max.clamp(1, MAX_READ)).min(left.max(1)) as usize;
        let mut buf = vec![0; wanted];
        let read = match &mut self.connection(&this)?.stream {
            Stream::Tcp(s) => s.read(&mut buf).await,
            Stream::Unix(s) => s.read(&mut buf).await,
        };
        let n = read.map_err(|e| io_failed("read", &e))?;
        self.spend(n as u64)?;
        buf.truncate(n);
        Ok(buf)
    }

    async fn finish(&mut self, this: Resource<Connection>) -> Result<(), connect::ConnectError> {
        let done = match &mut self.connection(&this)?.stream {
            Stream::Tcp(s) => s.shutdown().await,
            Stream::Unix(s) => s.shutdown().await,
        };
        done.map_err(|e| io_failed("finish", &e))
    }

    async fn drop(&mut self, this: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

/// The name a lookup of `kind` asks for: an IP address given for a PTR lookup becomes its
/// reverse name; every name is absolute (no search list).
fn query_name(name: &str, kind: dns::RecordType) -> Result<Name, String> {
    if matches!(kind, dns::RecordType::Ptr)
        && let Ok(ip) = name.parse::<IpAddr>()
    {
        return Ok(Name::from(ip));
    }
    let absolute = if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    };
    Name::from_utf8(&absolute).map_err(|e| format!("{name:?} is not a domain name: {e}"))
}

fn answer(data: &RData) -> Option<dns::Answer> {
    let name = |n: &Name| n.to_ascii().trim_end_matches('.').to_string();
    Some(match data {
        RData::A(a) => dns::Answer::A(a.0.to_string()),
        RData::AAAA(aaaa) => dns::Answer::Aaaa(aaaa.0.to_string()),
        RData::TXT(txt) => dns::Answer::Txt(
            txt.txt_data
                .iter()
                .map(|part| String::from_utf8_lossy(part))
                .collect(),
        ),
        RData::MX(mx) => dns::Answer::Mx(dns::MxRecord {
            preference: mx.preference,
            exchange: name(&mx.exchange),
        }),
        RData::PTR(ptr) => dns::Answer::Ptr(name(&ptr.0)),
        _ => return None,
    })
}

impl dns::Host for State {
    async fn lookup(
        &mut self,
        name: String,
        kind: dns::RecordType,
    ) -> Result<Vec<dns::Answer>, dns::LookupError> {
        if !self.meta.grants.dns {
            let why = "DNS is not granted to this plugin (grant-dns)".to_string();
            return Err(dns::LookupError::Denied(self.denied(why)));
        }
        let cap = self.meta.grants.dns_lookups;
        if self.usage.lookups >= cap {
            let why = format!("over the limit of {cap} lookups per call (dns-lookups)");
            return Err(dns::LookupError::Denied(self.denied(why)));
        }
        self.usage.lookups += 1;
        Counters::add(&self.meta.counters.lookups, 1);
        let Some(resolver) = self.resolver.clone() else {
            return Err(dns::LookupError::Failed("the host has no resolver".into()));
        };
        let query = query_name(&name, kind).map_err(dns::LookupError::Failed)?;
        let record_type = match kind {
            dns::RecordType::A => RecordType::A,
            dns::RecordType::Aaaa => RecordType::AAAA,
            dns::RecordType::Txt => RecordType::TXT,
            dns::RecordType::Mx => RecordType::MX,
            dns::RecordType::Ptr => RecordType::PTR,
        };
        match resolver.lookup(query, record_type).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter(|record| record.record_type() == record_type)
                .filter_map(|record| answer(&record.data))
                .collect()),
            Err(NetError::Dns(DnsError::NoRecordsFound(no)))
                if no.response_code == ResponseCode::NXDomain =>
            {
                Err(dns::LookupError::Nxdomain)
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(_))) => Ok(Vec::new()),
            Err(e) => Err(dns::LookupError::Failed(e.to_string())),
        }
    }
}

/// The resolver a call's DNS lookups go through, shared by all plugins.
pub type Resolver = TokioResolver;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_print_back() {
        for text in [
            "unix:/run/clamav/clamd.ctl",
            "tcp:127.0.0.1:11333",
            "tcp:[::1]:3310",
        ] {
            assert_eq!(Endpoint::parse(text).expect(text).to_string(), text);
        }
        for bad in [
            "unix:relative",
            "tcp:localhost:11333",
            "tcp:127.0.0.1",
            "http://127.0.0.1:11333",
            "",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn ptr_lookups_of_addresses_ask_the_reverse_name() {
        let v4 = query_name("192.0.2.1", dns::RecordType::Ptr).expect("v4");
        assert_eq!(v4.to_ascii(), "1.2.0.192.in-addr.arpa.");
        let plain = query_name("2.0.0.127.zen.example", dns::RecordType::A).expect("name");
        assert_eq!(plain.to_ascii(), "2.0.0.127.zen.example.");
        assert!(query_name("a..b", dns::RecordType::A).is_err());
    }
}
