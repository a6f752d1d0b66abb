//! Postfix from Debian, started on loopback with its own configuration, as the reference:
//! the testkit's instance (MX for example.org into one Maildir) plus a submission listener
//! (STARTTLS required, then AUTH through Cyrus SASL against a sasldb holding
//! `bench@example.org`).

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use portcullis_bench::server::{PASSWORD, run_with_input};
use portcullis_testkit::postfix::free_port;
pub(crate) use portcullis_testkit::postfix::{ensure_installed as ensure_postfix, sh};

use crate::measure::Server;

/// The reference server.
pub(crate) struct Postfix {
    instance: portcullis_testkit::postfix::Postfix,
    pub(crate) submission: SocketAddr,
    pub(crate) cert: String,
}

impl Postfix {
    pub(crate) fn start() -> Postfix {
        Postfix::start_with("")
    }

    /// [`Postfix::start`], with `main_cf` added to its main.cf (such as `smtpd_milters`).
    pub(crate) fn start_with(main_cf: &str) -> Postfix {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
        let cert = certified.cert.pem();
        let submission_port = free_port();
        let instance = portcullis_testkit::postfix::Postfix::start("example.org", |d| {
            std::fs::write(d.join("cert.pem"), &cert).expect("cert");
            std::fs::write(d.join("key.pem"), certified.signing_key.serialize_pem()).expect("key");
            // The account, in a sasldb the unprivileged smtpd can read; Debian's Postfix
            // reads the Cyrus config from <config_directory>/sasl/smtpd.conf.
            std::fs::create_dir_all(d.join("etc/sasl")).expect("mkdir");
            let sasldb = d.join("sasldb2");
            run_with_input(
                Command::new("saslpasswd2")
                    .args(["-c", "-p", "-u", "example.org", "-f"])
                    .arg(&sasldb)
                    .arg("bench"),
                PASSWORD,
            );
            sh(Command::new("chown").arg("postfix").arg(&sasldb));
            std::fs::write(
                d.join("etc/sasl/smtpd.conf"),
                format!(
                    "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: {}\n",
                    sasldb.display()
                ),
            )
            .expect("smtpd.conf");
            let root = d.display();
            (
                format!(
                    "smtpd_tls_cert_file = {root}/cert.pem\nsmtpd_tls_key_file = {root}/key.pem\n\
                     cyrus_sasl_config_path = {root}/etc/sasl\nsmtpd_sasl_type = cyrus\nsmtpd_sasl_path = smtpd\n{main_cf}"
                ),
                format!(
                    "127.0.0.1:{submission_port} inet n - n - - smtpd -o smtpd_tls_security_level=encrypt \
                     -o smtpd_sasl_auth_enable=yes -o smtpd_relay_restrictions=permit_sasl_authenticated,reject \
                     -o smtpd_recipient_restrictions=permit_sasl_authenticated,reject\n"
                ),
            )
        });
        let submission: SocketAddr = format!("127.0.0.1:{submission_port}").parse().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(submission).is_err() {
            assert!(
                Instant::now() < deadline,
                "postfix's submission listener did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Postfix {
            instance,
            submission,
            cert,
        }
    }
}

impl Server for Postfix {
    fn addr(&self) -> SocketAddr {
        self.instance.addr
    }
    fn root_pid(&self) -> u32 {
        self.instance.master_pid()
    }
    fn maildirs(&self) -> Vec<PathBuf> {
        vec![self.instance.maildir()]
    }
    fn dir(&mut self) -> &mut tempfile::TempDir {
        &mut self.instance.dir
    }
}

pub(crate) fn version(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
