//! Local delivery over LMTP to Dovecot: Postfix (`virtual_transport = lmtp:unix:…`)
//! against Portcullis (`[delivery] local = "lmtp"`), each with a Dovecot of its own,
//! configured alike (Debian's 2.3, the testkit's config), taking MX mail for
//! `postmaster@example.org` from smtp-source. A message counts once Dovecot has written it
//! into the user's Maildir. CPU is each MTA's own process tree (Dovecot's is not counted).

use std::net::SocketAddr;
use std::path::PathBuf;

use portcullis_bench::server::start_with;
use portcullis_testkit::dovecot::Dovecot;

use crate::Args;
use crate::measure::*;
use crate::postfix::Postfix;

/// An MTA delivering to its own Dovecot.
struct OverLmtp<S> {
    mta: S,
    dovecot: Dovecot,
}

impl<S: Server> Server for OverLmtp<S> {
    fn addr(&self) -> SocketAddr {
        self.mta.addr()
    }
    fn root_pid(&self) -> u32 {
        self.mta.root_pid()
    }
    fn maildirs(&self) -> Vec<PathBuf> {
        vec![self.dovecot.mail_root.join("example.org/postmaster/new")]
    }
    fn dir(&mut self) -> &mut tempfile::TempDir {
        self.mta.dir()
    }
}

fn dovecot() -> Dovecot {
    Dovecot::start(&[("postmaster@example.org", "bench")], None)
}

pub(crate) fn lmtp_path(a: &Args, kept: &mut Kept) {
    println!("\n### Local delivery over LMTP to Dovecot (smtp-source, one connection per message)\n");
    println!("| sessions | size | server | msgs/s | vs Postfix | CPU s / 1000 msgs | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|---|---|");
    for &size in &a.sizes {
        for &sessions in &a.sessions {
            let postfix = {
                let dovecot = dovecot();
                let main_cf = format!("virtual_transport = lmtp:unix:{}\n", dovecot.lmtp.display());
                let mut p = OverLmtp {
                    mta: Postfix::start_with(&main_cf),
                    dovecot,
                };
                measure(&mut p, kept, sessions, size, a.seconds)
            };
            let ours = {
                let dovecot = dovecot();
                let extra = format!(
                    "\n[delivery]\nlocal = \"lmtp\"\nlmtp = \"unix:{}\"\n",
                    dovecot.lmtp.display()
                );
                let mut d = OverLmtp {
                    mta: start_with(&a.binary, false, "", &extra),
                    dovecot,
                };
                measure(&mut d, kept, sessions, size, a.seconds)
            };
            print_rows(
                sessions,
                size,
                &[
                    ("Postfix, lmtp transport", &postfix),
                    ("Portcullis, local = \"lmtp\"", &ours),
                ],
            );
        }
    }
}
