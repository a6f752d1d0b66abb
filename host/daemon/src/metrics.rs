//! The Prometheus endpoint (`[metrics] address`, off by default): counters and gauges the
//! daemon records through the `metrics` facade, rendered on `GET /metrics`. Every series is
//! written by one typed function here, so each family has one set of labels.
//!
//! Families: `portcullis_sessions_total` and `portcullis_sessions_active` by listener,
//! `portcullis_messages_total` by outcome and reason, `portcullis_hook_verdicts_total` and
//! `portcullis_plugin_call_seconds` by hook and plugin, `portcullis_plugin_errors_total` by
//! plugin and kind, `portcullis_queue_messages` and `portcullis_queue_oldest_seconds`,
//! `portcullis_tls_handshakes_total` by listener and result, `portcullis_auth_total` by
//! result (accepted, rejected, tempfail, throttled), `portcullis_auth_cache_hits_total`,
//! `portcullis_reloads_total` by result,
//! `portcullis_connections_refused_total` by listener and reason (listener, address),
//! `portcullis_sessions_timed_out_total` by listener and what was slow,
//! `portcullis_authentication_total` by method (spf, dkim, arc, dmarc, iprev) and result,
//! `portcullis_plugin_capability_total` by plugin and use (granted DNS and connections),
//! `portcullis_spool_free_bytes` and `portcullis_spool_short_total` (`[limits]
//! spool-min-free`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use portcullis_smtp::Hook;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A session opened on `listener`; the active gauge goes down when the guard is dropped.
pub fn session_opened(listener: &'static str) -> impl Drop {
    metrics::counter!("portcullis_sessions_total", "listener" => listener).increment(1);
    let active = metrics::gauge!("portcullis_sessions_active", "listener" => listener);
    active.increment(1.0);
    struct Active(metrics::Gauge);
    impl Drop for Active {
        fn drop(&mut self) {
            self.0.decrement(1.0);
        }
    }
    Active(active)
}

/// A connection turned away on `listener` because of a cap (`listener` or `address`).
pub fn connection_refused(listener: &'static str, reason: &'static str) {
    metrics::counter!("portcullis_connections_refused_total", "listener" => listener, "reason" => reason)
        .increment(1);
}

/// The spool's disk measured at a MAIL FROM: `free` octets, and whether that was short
/// of what the transaction needed (it was answered `452 4.3.1`).
pub fn spool_room(free: u64, short: bool) {
    metrics::gauge!("portcullis_spool_free_bytes").set(free as f64);
    if short {
        metrics::counter!("portcullis_spool_short_total").increment(1);
    }
}

/// An AUTH answered without a check, because its client address failed too often.
pub fn auth_throttled() {
    metrics::counter!("portcullis_auth_total", "result" => "throttled").increment(1);
}

/// A question Dovecot could not answer (unreachable, or a temporary failure): `service` is
/// `"auth"` (a password, `[auth] dovecot`) or `"userdb"` (a recipient, `[auth]
/// dovecot-userdb`).
pub fn dovecot_unavailable(service: &'static str) {
    metrics::counter!("portcullis_dovecot_unavailable_total", "service" => service).increment(1);
}

/// An operation on the shared rate store (`[rate] store`) that failed.
pub fn rate_store_error() {
    metrics::counter!("portcullis_rate_store_errors_total").increment(1);
}

/// A TLS handshake on `listener`: `result` is `"ok"` or `"failed"`.
pub fn tls_handshake(listener: &'static str, result: &'static str) {
    metrics::counter!("portcullis_tls_handshakes_total", "listener" => listener, "result" => result)
        .increment(1);
}

/// An AUTH: `result` is `"accepted"`, `"rejected"` or `"tempfail"`.
pub fn auth(result: &'static str) {
    metrics::counter!("portcullis_auth_total", "result" => result).increment(1);
}

/// An AUTH answered from the cache of verified credentials (`[auth] cache-ttl`, an auth
/// plugin's `cache`).
pub fn auth_cache_hit() {
    metrics::counter!("portcullis_auth_cache_hits_total").increment(1);
}

/// A message's fate on `listener`: `outcome` (`accepted`, `refused`, `deferred`,
/// `discarded`) and why (`""`, `spool`, or the hook that decided).
pub fn message(listener: &'static str, outcome: &'static str, reason: &'static str) {
    metrics::counter!("portcullis_messages_total", "listener" => listener, "outcome" => outcome, "reason" => reason)
        .increment(1);
}

/// One mail authentication method's result on a message arriving on MX.
pub fn authentication(method: &'static str, result: &'static str) {
    metrics::counter!("portcullis_authentication_total", "method" => method, "result" => result).increment(1);
}

/// One plugin's verdict (its kind) and how long the call took.
pub fn hook_verdict(plugin: &str, hook: Hook, kind: &'static str, took: std::time::Duration) {
    let hook = hook.name();
    metrics::counter!("portcullis_hook_verdicts_total", "hook" => hook, "plugin" => plugin.to_string(), "verdict" => kind)
        .increment(1);
    metrics::histogram!("portcullis_plugin_call_seconds", "hook" => hook, "plugin" => plugin.to_string())
        .record(took.as_secs_f64());
}

/// A plugin failure of `kind` (trap, timeout, ...).
pub fn plugin_failed(plugin: &str, hook: Hook, kind: &'static str) {
    metrics::counter!("portcullis_plugin_errors_total", "plugin" => plugin.to_string(), "hook" => hook.name(), "kind" => kind)
        .increment(1);
}

/// A session closed for being too slow: `what` is `command` or `content`.
pub fn timed_out(listener: &'static str, what: &'static str) {
    metrics::counter!("portcullis_sessions_timed_out_total", "listener" => listener, "what" => what)
        .increment(1);
}

/// A SIGHUP reload: `result` is `"ok"` or `"refused"`.
pub fn reload(result: &'static str) {
    metrics::counter!("portcullis_reloads_total", "result" => result).increment(1);
}

/// Installs the recorder and serves it; returns the bound address.
pub async fn serve(
    address: SocketAddr,
    ctx: std::sync::Weak<crate::context::Context>,
) -> std::io::Result<SocketAddr> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let (handle, ctx) = (handle.clone(), ctx.clone());
            tokio::spawn(async move {
                let mut request = Vec::with_capacity(1024);
                let mut buf = [0u8; 1024];
                // Read the request head (bounded); the body, if any, is ignored.
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                    match tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf)).await
                    {
                        Ok(Ok(n)) if n > 0 => request.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let response = if request.starts_with(b"GET /metrics ")
                    || request.starts_with(b"GET /metrics?")
                {
                    let Some(ctx) = ctx.upgrade() else {
                        return;
                    };
                    let body = render(&handle, &ctx).await;
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
                };
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(bound)
}

/// The gauges read at scrape time (queue size and age, the plugins' use of their grants),
/// then everything recorded.
async fn render(handle: &PrometheusHandle, ctx: &crate::context::Context) -> String {
    plugin_capabilities(&ctx.hooks.plugins());
    let spool = Arc::clone(&ctx.spool);
    let ids = tokio::task::spawn_blocking(move || spool.list().unwrap_or_default())
        .await
        .unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let oldest = ids
        .iter()
        .map(portcullis_spool::QueueId::micros)
        .min()
        .map_or(0.0, |micros| now.saturating_sub(micros) as f64 / 1e6);
    metrics::gauge!("portcullis_queue_messages").set(ids.len() as f64);
    metrics::gauge!("portcullis_queue_oldest_seconds").set(oldest);
    handle.render()
}

/// `portcullis_plugin_capability_total` by plugin and use (`lookups`, `connections`,
/// `bytes`, `denied`): what each loaded plugin's calls used of their grants since it was
/// loaded (a swapped-in version starts again from zero, as a restarted process would).
fn plugin_capabilities(plugins: &portcullis_runtime::PluginSet) {
    use std::sync::atomic::Ordering::Relaxed;
    for slot in plugins.all() {
        let plugin = slot.current();
        let counters = &plugin.meta.counters;
        for (name, value) in [
            ("lookups", &counters.lookups),
            ("connections", &counters.connections),
            ("bytes", &counters.bytes),
            ("denied", &counters.denied),
        ] {
            metrics::counter!("portcullis_plugin_capability_total", "plugin" => plugin.meta.name.clone(), "use" => name)
                .absolute(value.load(Relaxed));
        }
    }
}
