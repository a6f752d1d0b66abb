//! MX with real filtering services behind it: one clamd and one rspamd, asked by both
//! servers. Postfix asks them through milters (Debian's clamav-milter on clamd, rspamd's
//! proxy worker in milter mode on rspamd's normal worker), as operators run it; Portcullis
//! asks them through its shipped plugins — `clamav` (virus hook, clamd's socket) and
//! `rspamd` (spam hook, `/checkv2`) — and, on the very path Postfix takes, through its
//! `milter` plugin on both hooks asking the same two milters. Since every server waits on the
//! same daemons, the ratios show what each hook path costs around them.

use portcullis_bench::server::start_with;
use portcullis_testkit::clamav_milter::ClamavMilter;
use portcullis_testkit::clamd::Clamd;
use portcullis_testkit::rspamd::Rspamd;

use crate::Args;
use crate::measure::*;
use crate::postfix::Postfix;

/// One `[[plugin]]` section granted `endpoint`, with `config` for its table.
fn plugin(hook: &str, file: &str, endpoint: &str, config: &str) -> String {
    let path = std::path::Path::new(portcullis_runtime::builtin::BUILD_DIR).join(file);
    format!(
        "\n[[plugin]]\nhook = \"{hook}\"\npath = \"{}\"\ntimeout = \"60s\"\ngrant-connect = [\"{endpoint}\"]\n\
         [plugin.config]\naddress = \"{endpoint}\"\n{config}",
        path.display()
    )
}

pub(crate) fn services_path(a: &Args, kept: &mut Kept) {
    let dns = portcullis_testkit::dns::Dns::start(&[]);
    let clamd = Clamd::start("30M");
    let rspamd = Rspamd::start(dns.addr);
    let clamav_milter = ClamavMilter::start(&clamd);
    let socket = format!("unix:{}", clamd.socket.display());
    let direct = plugin("virus", "clamav.wasm", &socket, "")
        + &plugin("spam", "rspamd.wasm", &format!("tcp:{}", rspamd.normal), "");
    let milters = plugin(
        "virus",
        "milter.wasm",
        &format!("tcp:{}", clamav_milter.addr),
        "hostname = \"bench.example.org\"\n",
    ) + &plugin(
        "spam",
        "milter.wasm",
        &format!("tcp:{}", rspamd.milter),
        "hostname = \"bench.example.org\"\n",
    );
    let postfix_milters = format!(
        "smtpd_milters = inet:{}, inet:{}\nmilter_default_action = tempfail\nmilter_protocol = 6\n",
        clamav_milter.addr, rspamd.milter
    );

    println!("\n### MX with clamd and rspamd (smtp-source, one connection per message)\n");
    println!("| sessions | size | server | msgs/s | vs Postfix | CPU s / 1000 msgs | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|---|---|");
    for &size in &a.sizes {
        for &sessions in &a.sessions {
            let postfix = {
                let mut p = Postfix::start_with(&postfix_milters);
                measure(&mut p, kept, sessions, size, a.seconds)
            };
            let plugins = {
                let mut d = start_with(&a.binary, false, "", &direct);
                measure(&mut d, kept, sessions, size, a.seconds)
            };
            let through_milters = {
                let mut d = start_with(&a.binary, false, "", &milters);
                measure(&mut d, kept, sessions, size, a.seconds)
            };
            print_rows(
                sessions,
                size,
                &[
                    ("Postfix, clamav-milter + rspamd milter", &postfix),
                    ("Portcullis, clamav + rspamd plugins", &plugins),
                    ("Portcullis, milter plugin on both hooks", &through_milters),
                ],
            );
        }
    }
    println!(
        "\nCPU counts each server's own process tree only (clamd, rspamd and the milters are shared and not counted)."
    );
}
