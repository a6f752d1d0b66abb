//! One hook call per example plugin, fresh instance included (what every message pays).

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_bench::{message, session};
use portcullis_runtime::bindings::rate::exports::portcullis::filter::rate::{Counters, Usage, Window};
use portcullis_runtime::{Hook, LoadedPlugin, PluginSpec, Runtime, RuntimeConfig};
use portcullis_smtp::Message;
use portcullis_smtp::command::Mechanism;
use portcullis_smtp::session::{Credentials, PipelineKind, SessionInfo};

fn spec(file: &str, hook: Hook, config: serde_json::Value) -> Arc<PluginSpec> {
    let serde_json::Value::Object(config) = config else {
        unreachable!("the configs below are objects");
    };
    portcullis_bench::spec(file, hook, config)
}

/// A plugin in another language, built by `plugins/<lang>/build.sh`, loaded; `None`, with a
/// note, when it is not built.
fn language_plugin(
    runtime: &Runtime,
    lang: &str,
    file: &str,
    hook: Hook,
    config: serde_json::Value,
) -> Option<LoadedPlugin> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/plugins")
        .join(lang)
        .join(file);
    if !path.is_file() {
        eprintln!(
            "{} not built: run plugins/{lang}/build.sh to bench it",
            path.display()
        );
        return None;
    }
    let mut spec = (*spec(file, hook, config)).clone();
    spec.name = file.trim_end_matches(".wasm").replace('_', "-");
    spec.path = path;
    Some(runtime.load(Arc::new(spec)).expect("load"))
}

/// What every benchmark of a hook call shares.
struct Setup {
    rt: tokio::runtime::Runtime,
    runtime: Runtime,
    mx: SessionInfo,
    submission: SessionInfo,
    msg: Arc<Message>,
    usage: Usage,
}

fn hooks(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let runtime = Runtime::new(&RuntimeConfig {
        max_memory: 128 << 20,
        instances: 8,
        cache_dir: None,
    })
    .expect("runtime");
    let w = Window {
        messages: 3,
        recipients: 3,
    };
    let counters = Counters {
        minute: w,
        hour: w,
        day: w,
    };
    let setup = Setup {
        rt,
        runtime,
        mx: session(PipelineKind::Mx),
        submission: session(PipelineKind::Submission),
        msg: message(10 * 1024),
        usage: Usage {
            account: counters,
            client_ip: counters,
        },
    };
    bundled(c, &setup);
    other_languages(c, &setup);
    auth(c, &setup);
}

/// The bundled Rust plugins on the content and rate hooks.
fn bundled(c: &mut Criterion, s: &Setup) {
    let Setup {
        rt,
        runtime,
        mx,
        submission,
        msg,
        usage,
    } = s;
    let virus = runtime
        .load(spec("virus_signatures.wasm", Hook::Virus, serde_json::json!({})))
        .expect("load");
    c.bench_function("virus-signatures 10KiB", |b| {
        b.to_async(rt)
            .iter(|| async { runtime.virus(&virus, mx, msg).await.expect("scan") })
    });
    let spam = runtime
        .load(spec("spam_rules.wasm", Hook::Spam, serde_json::json!({})))
        .expect("load");
    c.bench_function("spam-rules 10KiB", |b| {
        b.to_async(rt)
            .iter(|| async { runtime.spam(&spam, mx, msg).await.expect("classify") })
    });
    let rate = runtime
        .load(spec(
            "rate_limit.wasm",
            Hook::Rate,
            serde_json::json!({ "account": { "messages-per-minute": 100 } }),
        ))
        .expect("load");
    c.bench_function("rate-limit", |b| {
        b.to_async(rt).iter(|| async {
            runtime
                .rate(&rate, submission, &msg.envelope, usage)
                .await
                .expect("rate")
        })
    });
}

/// Plugins in other languages, built by their own scripts (scripts/test.sh runs them).
fn other_languages(c: &mut Criterion, s: &Setup) {
    let (rt, runtime, msg) = (&s.rt, &s.runtime, &s.msg);
    let (mx, submission, usage) = (&s.mx, &s.submission, &s.usage);
    let bayes = serde_json::json!({ "tokens": { "viagra": 3.0, "report": -1.0, "quarterly": -0.5 } });
    if let Some(bayes) = language_plugin(runtime, "python", "spam_bayes.wasm", Hook::Spam, bayes) {
        c.bench_function("spam-bayes (Python) 10KiB", |b| {
            b.to_async(rt)
                .iter(|| async { runtime.spam(&bayes, mx, msg).await.expect("classify") })
        });
    }
    let none = serde_json::json!({});
    if let Some(scan) = language_plugin(runtime, "c", "virus_scan.wasm", Hook::Virus, none.clone()) {
        c.bench_function("virus-scan (C) 10KiB", |b| {
            b.to_async(rt)
                .iter(|| async { runtime.virus(&scan, mx, msg).await.expect("scan") })
        });
    }
    if let Some(haraka) = language_plugin(runtime, "javascript", "rate_haraka.wasm", Hook::Rate, none) {
        c.bench_function("rate-haraka (JavaScript)", |b| {
            b.to_async(rt).iter(|| async {
                runtime
                    .rate(&haraka, submission, &msg.envelope, usage)
                    .await
                    .expect("rate")
            })
        });
    }
}

/// auth-table: argon2id with the default parameters (19 MiB, 2 passes) dominates it.
fn auth(c: &mut Criterion, s: &Setup) {
    let hash =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$BZHGAFdZ4Kk0HGkHuVsZd0GbXatFtO3OnQBqMK4pSj8";
    let auth = s
        .runtime
        .load(spec(
            "auth_table.wasm",
            Hook::Auth,
            serde_json::json!({ "accounts": { "alice@example.org": hash } }),
        ))
        .expect("load");
    let creds = Credentials {
        mechanism: Mechanism::Plain,
        authzid: None,
        username: "alice@example.org".into(),
        password: "wrong".into(),
    };
    let mut group = c.benchmark_group("auth");
    group.sample_size(10);
    group.bench_function("auth-table argon2id", |b| {
        b.to_async(&s.rt).iter(|| async {
            s.runtime
                .authenticate(&auth, &s.submission, &creds)
                .await
                .expect("auth")
        })
    });
    group.finish();
}

criterion_group!(benches, hooks);
criterion_main!(benches);
