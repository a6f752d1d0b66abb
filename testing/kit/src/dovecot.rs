//! Dovecot (Debian's `dovecot-core`, `-imapd` and `-lmtpd`) of a test's own, on loopback: IMAP
//! on a free port over the Maildirs a test names, and its authentication service on private
//! `auth-client` and `auth-userdb` sockets, with a passwd-file of the test's users, and LMTP
//! on a private socket (`+Junk` files into Junk; quotas kept, a full one answered 4xx). Failures are
//! answered at once (`auth_failure_delay = 0`), so a wrong password costs a test no time,
//! and logged with the user and the client's address (`auth_verbose`).

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::postfix::free_port;

/// Where the users' mail is: a Maildir root (`<root>/<domain>/<user>`) and the system user
/// and group that own it (Dovecot refuses mail access as root).
pub struct Mail<'a> {
    /// The root.
    pub root: &'a Path,
    /// The owner.
    pub user: &'a str,
    /// Its group.
    pub group: &'a str,
}

/// A running Dovecot, killed when dropped.
pub struct Dovecot {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// IMAP, without TLS.
    pub imap: SocketAddr,
    /// Its authentication service's client socket (`auth-client`).
    pub auth_client: PathBuf,
    /// Its user database's socket (`auth-userdb`).
    pub auth_userdb: PathBuf,
    /// Its LMTP service's socket (`lmtp`): local delivery into the users' Maildirs,
    /// `+Junk` into their Junk folder.
    pub lmtp: PathBuf,
    /// Where mail goes when no [`Mail`] was given: `<this>/<domain>/<user>`.
    pub mail_root: PathBuf,
}

impl Dovecot {
    /// Starts Dovecot with `users` (`name`, `password`) in its passwd-file and, when given,
    /// IMAP over `mail`; returns once it listens.
    pub fn start(users: &[(&str, &str)], mail: Option<Mail<'_>>) -> Dovecot {
        Dovecot::start_with_full(users, mail, &[])
    }

    /// [`Dovecot::start`], with the users of `full` over their quota (a quota of one
    /// octet; `quota_full_tempfail = yes`, so LMTP answers them with a 4xx).
    pub fn start_with_full(users: &[(&str, &str)], mail: Option<Mail<'_>>, full: &[&str]) -> Dovecot {
        assert!(
            Path::new("/usr/sbin/dovecot").exists(),
            "dovecot is missing: apt-get install dovecot-core dovecot-imapd (scripts/test.sh does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("portcullis-dovecot")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        // Its unprivileged processes read the passwd-file and reach the sockets.
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let passwd: String = users
            .iter()
            .map(|(name, password)| {
                let quota = if full.contains(name) {
                    "userdb_quota_rule=*:storage=1b quota_rule=*:storage=1b"
                } else {
                    ""
                };
                format!("{name}:{{PLAIN}}{password}::::::{quota}\n")
            })
            .collect();
        std::fs::write(d.join("passwd"), passwd).expect("passwd");
        let port = free_port();
        // Mail is written (over LMTP) as the mail's owner: nobody, unless given.
        let own_root = d.join("mail");
        std::fs::create_dir_all(&own_root).expect("mail root");
        crate::postfix::sh(Command::new("chown").arg("nobody:nogroup").arg(&own_root));
        let (root, user, group) = match &mail {
            Some(m) => (m.root, m.user, m.group),
            None => (own_root.as_path(), "nobody", "nogroup"),
        };
        let mail_location = format!("maildir:{}/%d/%n", root.display());
        let userdb = format!(
            "driver = passwd-file\n  args = {}/passwd\n  default_fields = uid={user} gid={group} home={}/%d/%n",
            d.display(),
            root.display()
        );
        let config = format!(
            r#"base_dir = {root}/run
state_dir = {root}/state
instance_name = portcullis-test-{port}
listen = 127.0.0.1
protocols = imap lmtp
ssl = no
recipient_delimiter = +
lmtp_save_to_detail_mailbox = yes
lda_mailbox_autocreate = yes
lda_mailbox_autosubscribe = yes
mail_plugins = $mail_plugins quota
quota_full_tempfail = yes
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
auth_verbose = yes
log_path = {root}/dovecot.log
mail_location = {mail_location}
passdb {{
  driver = passwd-file
  args = {root}/passwd
}}
userdb {{
  {userdb}
}}
service auth {{
  unix_listener auth-client {{
    mode = 0666
  }}
  unix_listener auth-userdb {{
    mode = 0666
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0666
  }}
}}
plugin {{
  quota = maildir:User quota
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"#,
            root = d.display(),
        );
        std::fs::write(d.join("dovecot.conf"), config).expect("dovecot.conf");
        let mut dovecot = Dovecot {
            imap: SocketAddr::from(([127, 0, 0, 1], port)),
            auth_client: d.join("run/auth-client"),
            auth_userdb: d.join("run/auth-userdb"),
            lmtp: d.join("run/lmtp"),
            mail_root: root.to_path_buf(),
            dir,
            child: None,
        };
        dovecot.resume();
        dovecot
    }

    /// Starts it again after [`Dovecot::stop`]; returns once IMAP and the auth socket answer.
    pub fn resume(&mut self) {
        let d = self.dir.path();
        let child = Command::new("/usr/sbin/dovecot")
            .args(["-F", "-c"])
            .arg(d.join("dovecot.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dovecot");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(self.imap).is_err()
            || std::os::unix::net::UnixStream::connect(&self.auth_client).is_err()
        {
            assert!(Instant::now() < deadline, "dovecot did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it (as a crash would, at once); [`Dovecot::resume`] starts it again.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Its helper processes outlive the master for a moment: wait until the socket is
        // dead, so that a test sees Dovecot gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&self.auth_client).is_ok() && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(self.dir.path().join("run"));
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}
