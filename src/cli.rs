//! The `finguard` command line. Exit codes: 0 success, 1 bad config or bad
//! arguments, 2 runtime failure (cannot bind, ...). Errors go to stderr, one
//! clear line first.

use crate::config::{self, Config, ConfigError, Overrides};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "finguard",
    version,
    about = "A reverse proxy that shields web servers from buggy clients"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the proxy (the default).
    Run(RunArgs),
    /// Validate the config and print it with every default filled in.
    Check(CheckArgs),
    /// Count the host's TCP sockets by state (from /proc/net/tcp{,6}).
    Census(CensusArgs),
    /// Exit 0 if the admin /healthz answers 200 (for Docker HEALTHCHECK).
    Health(HealthArgs),
    /// The buggy-client simulator, against any HTTP server you name.
    Simulate(SimulateArgs),
    /// Zero-setup demonstration on loopback: a naive backend, with and without finguard.
    Demo(DemoArgs),
    /// A load-testing comparison of several targets under the same client mix, with an HTML report.
    Compare(CompareArgs),
    /// Write the man page and shell completions (for packaging).
    #[command(hide = true)]
    Generate(GenerateArgs),
}

#[derive(Args, Debug)]
struct GenerateArgs {
    /// Directory to write finguard.1 and the completions into.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct SimulateArgs {
    /// The server to test (HOST:PORT); only this address is contacted.
    #[arg(long, value_name = "HOST:PORT")]
    target: String,
    #[arg(long, value_enum)]
    scenario: crate::simulate::Scenario,
    /// Connections to open (capped at 20000).
    #[arg(long, default_value_t = crate::simulate::DEFAULT_CONNECTIONS)]
    connections: usize,
    /// How long the scenario runs, e.g. "3s" (capped at 10m).
    #[arg(long, default_value = "3s", value_parser = parse_duration_arg)]
    duration: std::time::Duration,
    /// Path to request (post-unauthorized posts to it).
    #[arg(long, default_value = "/")]
    path: String,
    /// Body size for post-unauthorized and slow-post, e.g. "4MiB".
    #[arg(long, default_value = "4MiB", value_parser = parse_size_arg)]
    body_bytes: u64,
    /// slow-read/slow-post: bytes per step (default 4KiB read, 200 posted).
    #[arg(long, value_parser = parse_size_arg)]
    step_bytes: Option<u64>,
    /// slow-read/slow-post: pause between steps (default 200ms read, 500ms posted).
    #[arg(long, value_parser = parse_duration_arg)]
    step_every: Option<std::time::Duration>,
    /// hoard: keep-alive connections per client (--connections counts clients; capped at 256).
    #[arg(long, default_value_t = crate::simulate::hoard::DEFAULT_POOL)]
    pool: usize,
    /// hoard: pause between two requests on one connection.
    #[arg(long, default_value = "3s", value_parser = parse_duration_arg)]
    every: std::time::Duration,
    /// hoard: new clients per second (one connection, one GET, 2 s to be answered),
    /// from a quarter of the run to its end; 0: none (capped at 1000).
    #[arg(long, default_value_t = 0.0)]
    newcomers: f64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct CompareArgs {
    /// A server to test, NAME=HOST:PORT (repeatable; run in this order, the
    /// first is the baseline of the ratios). Only these addresses are contacted.
    #[arg(long = "target", value_name = "NAME=HOST:PORT", required = true, value_parser = crate::compare::parse_target)]
    targets: Vec<crate::compare::Target>,
    /// Buggy clients run alongside the load: simulator scenarios with
    /// connection counts, e.g. "never-close:20,half-close,slowloris:5" (10 each when no count).
    #[arg(long, value_name = "SCENARIO[:N],...")]
    mix: Option<String>,
    /// Well-behaved GET requests per second, at a constant arrival rate (capped at 50000).
    #[arg(long, default_value_t = crate::compare::DEFAULT_RATE)]
    rate: f64,
    /// How long each target runs, e.g. "10s" (capped at 10m).
    #[arg(long, default_value = "10s", value_parser = parse_duration_arg)]
    duration: std::time::Duration,
    /// Keep-alive connections the well-behaved load may use (capped at 2000).
    #[arg(long, default_value_t = crate::compare::DEFAULT_LOAD_CONNECTIONS)]
    connections: usize,
    /// Path requested.
    #[arg(long, default_value = "/")]
    path: String,
    /// Count this port's server-side sockets for target NAME, e.g. the
    /// backend's port behind a front (repeatable; default: the target's port).
    #[arg(long = "census-port", value_name = "NAME=PORT", value_parser = crate::compare::parse_census_port)]
    census_ports: Vec<(String, u16)>,
    /// Write the self-contained HTML report here.
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
    /// Write the numbers as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    crate::config::units::parse_duration(s)
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    crate::config::units::parse_size(s)
}

#[derive(Args, Debug)]
struct CensusArgs {
    /// Only sockets whose local or remote port is this (repeatable).
    #[arg(long = "port", value_name = "N")]
    ports: Vec<u16>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Print again every SECS seconds until interrupted.
    #[arg(long, value_name = "SECS")]
    watch: Option<f64>,
}

#[derive(Args, Debug)]
struct HealthArgs {
    /// Admin address [default: $FINGUARD_ADMIN, else the config's [admin] addr, else 127.0.0.1:9901].
    #[arg(long, env = "FINGUARD_ADMIN", value_name = "ADDR")]
    admin: Option<String>,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Args, Debug, Clone, Default)]
struct ConfigArg {
    /// Config file [default: $FINGUARD_CONFIG, else conf/finguard.toml if it exists].
    #[arg(short = 'c', long = "config", env = "FINGUARD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args, Debug, Clone, Default)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    over: OverrideArgs,
    #[command(flatten)]
    process: ProcessArgs,
}

/// What the command line and environment put over the file: `run` uses
/// them, and `check` shows the config `run` would use with them.
#[derive(Args, Debug, Clone, Default)]
struct OverrideArgs {
    /// Listen address (repeatable); replaces the file's listeners.
    #[arg(long, env = "FINGUARD_LISTEN", value_delimiter = ',', value_name = "ADDR")]
    listen: Vec<String>,
    /// Backend address (repeatable); replaces the file's backends with one.
    #[arg(long, env = "FINGUARD_BACKEND", value_delimiter = ',', value_name = "ADDR")]
    backend: Vec<String>,
    /// Admin listener address.
    #[arg(long, env = "FINGUARD_ADMIN", value_name = "ADDR")]
    admin: Option<String>,
}

/// `run`'s own options.
#[derive(Args, Debug, Clone, Default)]
struct ProcessArgs {
    /// Unix socket for binary upgrades: a finguard started with the same
    /// path takes over the running one's listening sockets, which then drains.
    #[arg(long, env = "FINGUARD_UPGRADE_SOCKET", value_name = "PATH")]
    upgrade_socket: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct CheckArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    over: OverrideArgs,
    /// Also show the policy this User-Agent gets and which rules matched (repeatable).
    #[arg(long = "user-agent", value_name = "UA")]
    user_agent: Vec<String>,
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.cmd {
        Some(Cmd::Run(a)) => run(a),
        None => run(cli.run),
        Some(Cmd::Check(a)) => check(a),
        Some(Cmd::Census(a)) => census(a),
        Some(Cmd::Health(a)) => health(a),
        Some(Cmd::Simulate(a)) => simulate(a),
        Some(Cmd::Demo(a)) => demo(a),
        Some(Cmd::Compare(a)) => compare(a),
        Some(Cmd::Generate(a)) => generate(&a.out),
    }
}

/// The man page (`finguard.1`, one section per subcommand) and bash, zsh
/// and fish completions, from the same definitions the parser uses.
fn generate(out: &std::path::Path) -> ExitCode {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(out)?;
        let cmd = Cli::command();
        let mut page = Vec::new();
        let man = clap_mangen::Man::new(cmd.clone());
        man.render_title(&mut page)?;
        man.render_name_section(&mut page)?;
        man.render_synopsis_section(&mut page)?;
        man.render_description_section(&mut page)?;
        man.render_options_section(&mut page)?;
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = sub.get_name();
            page.extend_from_slice(format!(".SH \"FINGUARD {}\"\n", name.to_uppercase()).as_bytes());
            let sub_man = clap_mangen::Man::new(sub.clone().bin_name(format!("finguard {name}")));
            sub_man.render_synopsis_section(&mut page)?;
            sub_man.render_description_section(&mut page)?;
            sub_man.render_options_section(&mut page)?;
        }
        man.render_version_section(&mut page)?;
        std::fs::write(out.join("finguard.1"), page)?;
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            clap_complete::generate_to(shell, &mut Cli::command(), "finguard", out)?;
        }
        Ok(())
    };
    match write() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("finguard: generate into {}: {e}", out.display());
            ExitCode::from(2)
        }
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("finguard: cannot start the runtime: {e}");
            None
        }
    }
}

/// A token cancelled by Ctrl-C, so a run stops early and still reports.
fn ctrl_c_token() -> tokio_util::sync::CancellationToken {
    let t = tokio_util::sync::CancellationToken::new();
    let c = t.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            c.cancel();
        }
    });
    t
}

fn simulate(a: SimulateArgs) -> ExitCode {
    use crate::simulate;
    let target = match std::net::ToSocketAddrs::to_socket_addrs(&a.target).map(|mut i| i.next()) {
        Ok(Some(t)) => t,
        _ => {
            eprintln!("finguard: --target: {:?} is not a reachable HOST:PORT", a.target);
            return ExitCode::from(1);
        }
    };
    let Some(rt) = runtime() else { return ExitCode::from(2) };
    let step = step(&a);
    let opts = simulate::Options {
        step,
        connections: a.connections,
        duration: a.duration,
        path: a.path,
        body_bytes: usize::try_from(a.body_bytes).unwrap_or(usize::MAX),
        pool: a.pool,
        every: a.every,
        newcomers: if a.newcomers.is_finite() { a.newcomers } else { 0.0 },
        ..simulate::Options::new(target, a.scenario)
    };
    let report = rt.block_on(async { simulate::run(opts, ctrl_c_token()).await });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        print!("{}", simulate::table(&report));
    }
    ExitCode::SUCCESS
}

/// `--step-bytes`/`--step-every`, either defaulting to the scenario's.
fn step(a: &SimulateArgs) -> Option<(usize, std::time::Duration)> {
    use crate::simulate::slow_defaults;
    if a.step_bytes.is_none() && a.step_every.is_none() {
        return None;
    }
    let (bytes, every) = slow_defaults(a.scenario);
    let bytes = a.step_bytes.map_or(bytes, |b| usize::try_from(b).unwrap_or(usize::MAX));
    Some((bytes, a.step_every.unwrap_or(every)))
}

fn demo(a: DemoArgs) -> ExitCode {
    use crate::simulate::demo;
    let Some(rt) = runtime() else { return ExitCode::from(2) };
    let rows = rt.block_on(async { demo::run_demo(ctrl_c_token(), |line| eprintln!("finguard demo: {line}")).await });
    match rows {
        Ok(rows) if a.json => println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default()),
        Ok(rows) => print!("\n{}", demo::table(&rows)),
        Err(e) => {
            eprintln!("finguard demo: {e}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

/// The command line as typed, quoted where a shell would need it.
fn command_line() -> String {
    std::env::args()
        .map(|a| {
            let plain = !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@%+".contains(&b));
            if plain {
                a
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn compare(a: CompareArgs) -> ExitCode {
    use crate::compare;
    let mix = match compare::parse_mix(a.mix.as_deref().unwrap_or("")) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("finguard compare: --mix: {e}");
            return ExitCode::from(1);
        }
    };
    let opts = compare::Options {
        mix,
        rate: a.rate,
        duration: a.duration,
        connections: a.connections,
        path: a.path,
        census_ports: a.census_ports.into_iter().collect(),
        command: command_line(),
        ..compare::Options::new(a.targets)
    };
    if let Err(e) = opts.validate() {
        eprintln!("finguard compare: {e}");
        return ExitCode::from(1);
    }
    let Some(rt) = runtime() else { return ExitCode::from(2) };
    let report = rt.block_on(async {
        compare::check_reachable(&opts.targets).await?;
        let mut progress = compare::progress::Progress::new(opts.targets.len());
        let r = compare::run(opts, ctrl_c_token(), |t| progress.tick(t)).await;
        progress.finish();
        Ok::<_, String>(r)
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("finguard compare: {e}");
            return ExitCode::from(1);
        }
    };
    print!("{}", compare::summary::table(&report));
    let mut code = ExitCode::SUCCESS;
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("finguard compare: --json {}: {e}", path.display());
            code = ExitCode::from(2);
        }
    }
    if let Some(path) = &a.report {
        match std::fs::write(path, compare::report::html(&report)) {
            Ok(()) => eprintln!("finguard compare: report written to {}", path.display()),
            Err(e) => {
                eprintln!("finguard compare: --report {}: {e}", path.display());
                code = ExitCode::from(2);
            }
        }
    }
    code
}

fn census(a: CensusArgs) -> ExitCode {
    if let Some(w) = a.watch {
        if !(w.is_finite() && w > 0.0) {
            eprintln!("finguard: --watch: must be a positive number of seconds");
            return ExitCode::from(1);
        }
    }
    loop {
        let counts = crate::census::count_ports(&crate::census::sockets(), &a.ports);
        if a.json {
            println!("{}", serde_json::to_string(&counts).unwrap_or_default());
        } else {
            if a.watch.is_some() {
                println!("# {}", humantime::format_rfc3339_seconds(std::time::SystemTime::now()));
            }
            print!("{}", crate::census::table(&counts));
        }
        match a.watch {
            Some(secs) => std::thread::sleep(std::time::Duration::from_secs_f64(secs)),
            None => return ExitCode::SUCCESS,
        }
    }
}

fn health(a: HealthArgs) -> ExitCode {
    use std::io::{Read, Write};
    let addr = match a.admin {
        Some(a) => a,
        None => match load(&a.config, &Overrides::default()) {
            Ok(Config { admin: Some(addr), .. }) => addr.to_string(),
            _ => "127.0.0.1:9901".to_string(),
        },
    };
    let timeout = std::time::Duration::from_secs(3);
    let answer = (|| -> std::io::Result<String> {
        let sa = std::net::ToSocketAddrs::to_socket_addrs(&addr)?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let mut s = std::net::TcpStream::connect_timeout(&sa, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: finguard\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })();
    match answer {
        Ok(resp) if resp.starts_with("HTTP/1.1 200") => ExitCode::SUCCESS,
        Ok(resp) => {
            eprintln!(
                "finguard: {addr}/healthz: {}",
                resp.lines().next().unwrap_or("no answer")
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("finguard: {addr}/healthz: {e}");
            ExitCode::from(1)
        }
    }
}

fn load(c: &ConfigArg, ov: &Overrides) -> Result<Config, ConfigError> {
    let path = config::default_path(c.config.as_deref());
    config::load(path.as_deref(), ov)
}

fn check(a: CheckArgs) -> ExitCode {
    let cfg = match load(&a.config, &a.over.overrides()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("finguard: invalid config: {e}");
            return ExitCode::from(1);
        }
    };
    print!("{}", config::to_toml(&cfg));
    for ua in &a.user_agent {
        println!();
        print!("{}", explain(&cfg, ua));
    }
    eprintln!("finguard: {}: config is valid", cfg.source);
    ExitCode::SUCCESS
}

/// The policy a User-Agent gets, as TOML, for `finguard check --user-agent`.
fn explain(cfg: &Config, ua: &str) -> String {
    use toml::{Table, Value};
    let p = cfg.rules.classify(&cfg.client, ua);
    let mut t = Table::new();
    t.insert("user_agent".into(), Value::String(ua.to_string()));
    let matched = p
        .matched
        .iter()
        .map(|&i| Value::String(format!("user_agent[{i}]: {}", cfg.rules.rules()[i].pattern)))
        .collect();
    t.insert("matched".into(), Value::Array(matched));
    t.insert("keepalive".into(), Value::Boolean(p.allows_keepalive()));
    t.insert("nokeepalive".into(), Value::Boolean(p.nokeepalive));
    t.insert("downgrade_1_0".into(), Value::Boolean(p.downgrade_1_0));
    t.insert("force_response_1_0".into(), Value::Boolean(p.force_response_1_0));
    t.insert("reclaim_first".into(), Value::Boolean(p.reclaim_first));
    let h2 = if p.nokeepalive {
        "nokeepalive: GOAWAY after the first response; downgrade_1_0 and force_response_1_0 do not apply"
    } else {
        "downgrade_1_0 and force_response_1_0 do not apply; timeouts and the close mode do"
    };
    t.insert("over_http2".into(), Value::String(h2.into()));
    let client = config::SettingsOverride::of(&p.settings).to_table(true);
    t.insert("client".into(), Value::Table(client));
    let mut root = Table::new();
    root.insert("policy".into(), Value::Array(vec![Value::Table(t)]));
    toml::to_string_pretty(&root).unwrap_or_default()
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

impl OverrideArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            backend: self.backend.clone(),
            admin: self.admin.clone(),
        }
    }
}

fn run(a: RunArgs) -> ExitCode {
    let ov = a.over.overrides();
    let cfg = match load(&a.config, &ov) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("finguard: invalid config: {e}");
            return ExitCode::from(1);
        }
    };
    init_tracing(&cfg.log_level);
    // SIGHUP reads the same file with the same command-line overrides.
    let upgrade = a.process.upgrade_socket.clone();
    crate::lifecycle::run(cfg, move || load(&a.config, &ov), upgrade)
}
