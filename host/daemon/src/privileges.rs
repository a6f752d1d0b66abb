//! Privileges: bind the ports (25, 465, 587 need root or CAP_NET_BIND_SERVICE), then run as
//! the unprivileged user the config names. Running on as root is refused unless the config
//! says so explicitly (`run-as-root = true`; the embedded default does, for trying things
//! out in a container).

use std::path::Path;

use nix::unistd::{Gid, Uid, User};

/// The file creation mask: only the daemon's user may read what it writes (077), or,
/// with a mail reader's group (`[server] group`), that group too where the daemon asks for
/// it (007: the Maildirs; the spool and the users file are created 0600 regardless).
pub fn set_umask(group: bool) {
    let mask = if group { 0o007 } else { 0o077 };
    rustix::process::umask(rustix::fs::Mode::from_bits_truncate(mask));
}

/// Gives the mail root to `group` (a mail reader's): group-owned, 2770, so that every
/// folder created below inherits the group. The daemon's user must be in that group.
pub fn share_mail_root(root: &Path, group: &str) -> Result<(), PrivilegeError> {
    use std::os::unix::fs::PermissionsExt;
    let gid = nix::unistd::Group::from_name(group)
        .ok()
        .flatten()
        .ok_or_else(|| PrivilegeError::NoSuchGroup(group.to_string()))?
        .gid;
    let fail = |source| PrivilegeError::Group {
        path: root.display().to_string(),
        group: group.to_string(),
        source,
    };
    std::os::unix::fs::chown(root, None, Some(gid.as_raw())).map_err(fail)?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o2770)).map_err(fail)
}

/// Why the daemon will not go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrivilegeError {
    /// `[server] user` names no account of this system.
    #[error("server.user: no user {0:?} on this system")]
    NoSuchUser(String),
    /// `[server] group` names no group of this system.
    #[error("server.group: no group {0:?} on this system")]
    NoSuchGroup(String),
    /// The mail root cannot be given to `[server] group`.
    #[error(
        "server.group: cannot give {path} to group {group} (is the daemon's user a member of it?): {source}"
    )]
    Group {
        /// The mail root.
        path: String,
        /// The group.
        group: String,
        /// Why.
        source: std::io::Error,
    },
    /// Still root after binding, and the config did not allow it.
    #[error(
        "refusing to serve as root: set [server] user = \"portcullis\" (an unprivileged account) \
         or, if you really mean it, run-as-root = true"
    )]
    Root,
    /// The system refused to change users.
    #[error("cannot switch to user {user}: {source}")]
    Switch {
        /// The user.
        user: String,
        /// Why.
        source: nix::Error,
    },
    /// The data directory is not usable by the user the daemon runs as.
    #[error("data directory {path} is not writable by {user} (uid {uid}): {source}; chown it to that user")]
    DataDir {
        /// The directory.
        path: String,
        /// The user.
        user: String,
        /// Its uid.
        uid: u32,
        /// What failed.
        source: std::io::Error,
    },
}

/// Switches to `user` if the process is root (after the listeners are bound), or checks that
/// staying root was asked for. Must run before the data directory is touched.
pub fn drop_to(user: Option<&str>, run_as_root: bool) -> Result<(), PrivilegeError> {
    let root = Uid::effective().is_root();
    match (user, root) {
        (Some(name), true) => {
            let account = User::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| PrivilegeError::NoSuchUser(name.to_string()))?;
            let switch = |source| PrivilegeError::Switch {
                user: name.to_string(),
                source,
            };
            // Supplementary groups first (only root may change them), then the group, then
            // the user: once the uid changes there is no way back.
            nix::unistd::setgroups(&[account.gid]).map_err(switch)?;
            nix::unistd::setgid(account.gid).map_err(switch)?;
            nix::unistd::setuid(account.uid).map_err(switch)?;
            if Uid::effective().is_root() || Uid::current().is_root() || Gid::effective() != account.gid {
                return Err(PrivilegeError::Switch {
                    user: name.to_string(),
                    source: nix::Error::EPERM,
                });
            }
            tracing::info!(
                user = name,
                uid = account.uid.as_raw(),
                gid = account.gid.as_raw(),
                "dropped privileges"
            );
            Ok(())
        }
        (None, true) if !run_as_root => Err(PrivilegeError::Root),
        (None, true) => {
            tracing::warn!("serving as root (run-as-root = true)");
            Ok(())
        }
        // Not root: nothing to drop (ports were bound by capability or are high).
        (_, false) => Ok(()),
    }
}

/// Creates the data directory if needed and proves the current user can write in it.
pub fn check_data_dir(path: &Path) -> Result<(), PrivilegeError> {
    let user = User::from_uid(Uid::effective())
        .ok()
        .flatten()
        .map_or_else(|| "this user".to_string(), |u| u.name);
    let fail = |source| PrivilegeError::DataDir {
        path: path.display().to_string(),
        user: user.clone(),
        uid: Uid::effective().as_raw(),
        source,
    };
    std::fs::create_dir_all(path).map_err(fail)?;
    let probe = path.join(format!(".write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(fail)?;
    std::fs::remove_file(&probe).map_err(fail)
}
