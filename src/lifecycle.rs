//! The life of a `finguard run` process once its config is loaded: the
//! open-files limit raised, the runtime built, the listeners started, then
//! signals — SIGHUP reloads the config for new connections (a bad file is
//! refused and the running one kept), SIGTERM and SIGINT drain within
//! `shutdown_timeout` and exit, and so does a process whose listening
//! sockets a new one took over (`--upgrade-socket`, see `handoff`).

use crate::config::{Config, ConfigError};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Runs the server until a drain signal. `reload` reads the config again.
/// With `upgrade`, takes over the listening sockets of the finguard serving
/// on that Unix socket, if any, and then offers its own there.
pub fn run(cfg: Config, reload: impl Fn() -> Result<Config, ConfigError>, upgrade: Option<PathBuf>) -> ExitCode {
    // Every client and backend connection is a descriptor: take all the
    // kernel allows, as nginx and HAProxy do.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("finguard: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(serve(cfg, reload, upgrade))
}

async fn serve(cfg: Config, reload: impl Fn() -> Result<Config, ConfigError>, upgrade: Option<PathBuf>) -> ExitCode {
    use tokio::signal::unix::{signal, SignalKind};
    let shutdown_timeout = cfg.shutdown_timeout;
    let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut usr1)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
    ) else {
        eprintln!("finguard: cannot install signal handlers");
        return ExitCode::from(2);
    };
    let taken = match upgrade.as_deref().map(crate::handoff::take).transpose() {
        Ok(t) => t.flatten(),
        Err(e) => {
            eprintln!("finguard: upgrade: {e}");
            return ExitCode::from(2);
        }
    };
    let (inherited, old) = taken.unzip();
    let mut running = match crate::server::start(cfg, inherited, upgrade.is_some()).await {
        Ok(r) => r,
        Err(e) => {
            // The old process, if any, sees the hand-off fail and serves on.
            eprintln!("finguard: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(old) = old {
        tracing::info!("upgrade: serving on the sockets taken over; the old process drains");
        crate::handoff::confirm(old);
    }
    let upgraded = CancellationToken::new();
    if let Some(path) = upgrade {
        let socks = std::mem::take(&mut running.handoff);
        if let Err(e) = crate::handoff::serve(path.clone(), socks, upgraded.clone()) {
            eprintln!("finguard: cannot listen on the upgrade socket {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    for addr in &running.addrs {
        // A stable line that scripts and tests wait for.
        eprintln!("finguard: listening on {addr}");
    }
    // systemd's Type=notify: ready once every listener is bound (a no-op
    // without $NOTIFY_SOCKET).
    let status = format!(
        "listening on {}",
        running
            .addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)]);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = usr1.recv() => running.reopen_logs(),
            () = upgraded.cancelled() => break,
            _ = hup.recv() => match reload() {
                Ok(cfg) => {
                    let source = cfg.source.clone();
                    let not_applied = running.reload(cfg);
                    tracing::info!(config = %source, "SIGHUP: configuration reloaded for new connections");
                    if !not_applied.is_empty() {
                        tracing::warn!(?not_applied, "SIGHUP: these settings need a restart");
                    }
                }
                Err(e) => tracing::error!("SIGHUP: new config rejected, keeping the running one: {e}"),
            },
        }
    }
    tracing::info!(timeout = ?shutdown_timeout, "draining");
    notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("draining"),
    ]);
    if running.drain(shutdown_timeout).await {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!("shutdown_timeout reached with connections still open; exiting");
    }
    ExitCode::SUCCESS
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!("cannot notify the service manager ($NOTIFY_SOCKET): {e}");
    }
}
