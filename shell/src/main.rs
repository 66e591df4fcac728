//! `ferry --config PATH`: the proxy binary.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use ferry_core::config::Config;
use ferry_shell::proxy::{learn_identity, serve, Shared};
use ferry_shell::{admin, health, signals, usersync};
use smol::Executor;
use tracing::{info, warn};

const USAGE: &str =
    "usage: ferry --config PATH [--log-level error|warn|info|debug|trace] [--record DIR]";

struct Args {
    config: PathBuf,
    log_level: String,
    record: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut config = None;
    let mut record = None;
    let mut log_level = std::env::var("FERRY_LOG").unwrap_or_else(|_| "info".into());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => config = args.next().map(PathBuf::from),
            "--record" => {
                record = Some(PathBuf::from(
                    args.next().ok_or("--record needs a directory")?,
                ))
            }
            "--log-level" => log_level = args.next().ok_or("--log-level needs a value")?,
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--version" | "-V" => {
                println!("ferry {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    Ok(Args {
        config: config.ok_or("--config PATH is required")?,
        log_level,
        record,
    })
}

fn load_config(path: &PathBuf) -> Result<Config, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ferry: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let config = match load_config(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry: bad config {e}");
            std::process::exit(2);
        }
    };
    if let Some(dir) = &args.record {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("ferry: --record {}: {e}", dir.display());
            std::process::exit(2);
        }
    }
    if let Err(e) = run(config, args.config, args.record) {
        eprintln!("ferry: {e:#}");
        std::process::exit(1);
    }
    std::process::exit(0);
}

fn run(config: Config, path: PathBuf, record: Option<PathBuf>) -> anyhow::Result<()> {
    let mut seed = [0u8; 8];
    getrandom::getrandom(&mut seed).map_err(|e| anyhow::anyhow!("OS random source: {e}"))?;
    let mut shared = Shared::from_config(&config, u64::from_le_bytes(seed))?;
    let tls = ferry_shell::tls::Loaded::from_config(&config, &ferry_shell::tls::config_dir(&path))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    shared.tls.install(tls);
    if let Some(dir) = &record {
        info!(dir = %dir.display(), "recording every session's traffic");
    }
    shared.record_dir = record;
    let shared = Arc::new(shared);
    let signals = signals::install().context("installing signal handlers")?;
    let ex = Arc::new(Executor::new());
    // Half the cores by default: a proxy shares its machine with clients or
    // servers, and every extra executor thread adds cross-thread wake-ups. On
    // the 2-core bench machine one thread gave 0.93-0.97 of HAProxy's QPS,
    // two gave 0.84-0.90 (README, Figures).
    let threads = config
        .worker_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() / 2))
        .max(1);
    for i in 1..threads {
        let ex = ex.clone();
        std::thread::Builder::new()
            .name(format!("ferry-worker-{i}"))
            .spawn(move || smol::block_on(ex.run(smol::future::pending::<()>())))
            .context("spawning a worker thread")?;
    }
    smol::block_on(ex.clone().run(async {
        let listener = async_net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let admin_listener = admin::bind(config.admin_listen).await?;
        ex.spawn(signals::run(signals, shared.clone(), path))
            .detach();
        ex.spawn(admin::serve(ex.clone(), shared.clone(), admin_listener))
            .detach();
        learn_identity(&shared, config.server_version.as_deref()).await;
        if config.user_source.is_some() {
            if let Err(e) = usersync::sync_once(&shared).await {
                warn!(error = %e, "user sync failed at start; only configured users can log in");
            }
        }
        ex.spawn(usersync::run(shared.clone())).detach();
        ex.spawn(health::run(shared.clone())).detach();
        ex.spawn(ferry_shell::control::run(
            shared.clone(),
            ferry_shell::clock::SystemClock::new(),
        ))
        .detach();
        // A task of its own: polled inside block_on's own future, the accept
        // loop would be polled (a failed accept4 and an epoll_ctl re-arm)
        // every time any session task woke the executor.
        ex.spawn(serve(ex.clone(), shared.clone(), listener))
            .await?;
        drain(&shared).await;
        Ok(())
    }))
}

/// After shutdown began: waits for the sessions to close, cutting the rest after the grace period.
async fn drain(shared: &Shared) {
    let grace = std::time::Duration::from_millis(shared.config().shutdown_grace_ms);
    let deadline = std::time::Instant::now() + grace;
    loop {
        let open = shared.registry.len();
        if open == 0 {
            info!("all sessions closed; exiting");
            return;
        }
        if std::time::Instant::now() >= deadline {
            warn!(
                sessions = open,
                ?grace,
                "grace period over; closing the remaining sessions"
            );
            return;
        }
        async_io::Timer::after(std::time::Duration::from_millis(50)).await;
    }
}
