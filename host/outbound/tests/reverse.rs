//! The client's reverse name, as plugins see it, asked of a real DNS server on loopback.

use std::net::IpAddr;
use std::time::Duration;

use portcullis_outbound::{DnsSettings, Resolver};
use portcullis_testkit::dns::{Answer, Dns};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

#[tokio::test]
async fn reverse_names_are_forward_confirmed_or_not_or_absent() {
    let dns = Dns::start(&[
        // Confirmed: the second PTR name resolves back, the first does not.
        ("1.2.0.192.in-addr.arpa", Answer::Ptr("elsewhere.example.")),
        ("1.2.0.192.in-addr.arpa", Answer::Ptr("Mail.Far.Example.")),
        (
            "elsewhere.example",
            Answer::A("198.51.100.7".parse().expect("ip")),
        ),
        ("mail.far.example", Answer::A("192.0.2.1".parse().expect("ip"))),
        // A PTR name that does not resolve back.
        ("2.2.0.192.in-addr.arpa", Answer::Ptr("dynamic.isp.example.")),
    ]);
    let resolver = Resolver::new(&DnsSettings {
        nameservers: vec![dns.addr],
        timeout: Duration::from_secs(2),
    })
    .expect("resolver");
    assert_eq!(
        resolver.reverse_name(ip("192.0.2.1")).await,
        (Some("mail.far.example".to_string()), true)
    );
    assert_eq!(
        resolver.reverse_name(ip("192.0.2.2")).await,
        (Some("dynamic.isp.example".to_string()), false)
    );
    // No PTR record at all.
    assert_eq!(resolver.reverse_name(ip("192.0.2.3")).await, (None, false));
    // A server that stopped answering: no name, and no error either.
    dns.silent.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(resolver.reverse_name(ip("192.0.2.4")).await, (None, false));
}
