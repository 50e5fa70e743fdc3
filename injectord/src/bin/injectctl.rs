//! injectctl: the command-line client of injectord's control socket.

use std::{io::Read as _, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use injectord::family;
use injectord_client::{Client, ErrorResponse};
use serde_json::{Map, Value, json};

#[derive(Parser)]
#[command(version, about = "Control injectord: inject, list and remove faults")]
struct Cli {
    /// injectord's control socket.
    #[arg(
        long,
        global = true,
        env = "INJECTORD_SOCKET",
        default_value = "/run/injectord/injectord.sock"
    )]
    socket: PathBuf,
    /// Print the daemon's JSON result instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inject a fault, from a JSON spec (-f FILE, - for stdin) or from flags.
    Inject(Box<InjectArgs>),
    /// List active faults with their counters.
    List,
    /// Show one fault (by id or name).
    Get { fault: String },
    /// Remove one fault (by id or name).
    Remove { fault: String },
    /// Remove every fault.
    Clear,
    /// What this kernel supports, per backend.
    Capabilities,
    /// Daemon status.
    Status,
    /// Experiments: run a plan of faults against a live service while
    /// probing it, and report its KPIs.
    #[command(subcommand)]
    Experiment(ExperimentCommand),
}

#[derive(Subcommand)]
enum ExperimentCommand {
    /// Run a plan (JSON, or YAML for .yaml/.yml): prints a table (the JSON
    /// report with --json), a progress display on stderr meanwhile.
    Run {
        /// The plan file.
        plan: PathBuf,
        /// Also write a static HTML report (plots included) here.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Also write the JSON report here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// The fault library that `library` faults name specs in (default:
        /// `faultspecs/` next to the plan, else in the current directory).
        #[arg(long)]
        faultspecs: Option<PathBuf>,
    },
}

#[derive(Args)]
struct InjectArgs {
    /// JSON spec file ("-" reads stdin); the flags below are ignored then.
    #[arg(short, long, conflicts_with_all = ["cgroup", "pid", "container", "pod", "vm", "interface"])]
    file: Option<PathBuf>,
    /// Unique fault name (generated when absent).
    #[arg(long)]
    name: Option<String>,
    /// Target cgroup (path absolute or relative to the cgroup2 mount).
    #[arg(long, group = "target")]
    cgroup: Option<String>,
    /// Target the cgroup of this process.
    #[arg(long, group = "target")]
    pid: Option<u32>,
    /// Target a container by id or unique prefix (12+ hex digits).
    #[arg(long, group = "target")]
    container: Option<String>,
    /// Target a Kubernetes pod by uid (kubectl get pod NAME -o
    /// jsonpath='{.metadata.uid}'): the pod's cgroup under kubepods, all
    /// its containers, with either kubelet cgroup driver.
    #[arg(long, group = "target")]
    pod: Option<String>,
    /// Target a libvirt QEMU domain by name (as `virsh list` shows it): its
    /// machine scope, every process of the VM (the QEMU process, its vCPU
    /// and I/O threads, helpers libvirt put there).
    #[arg(long, group = "target")]
    vm: Option<String>,
    /// Target a network interface (packet faults).
    #[arg(long, group = "target")]
    interface: Option<String>,
    /// The interface's network namespace: a name under /run/netns or a
    /// path such as /proc/PID/ns/net (default: injectord's own).
    #[arg(long, requires = "interface")]
    netns: Option<String>,
    /// Fault type (see the list below); `-` and `_` are alike.
    #[arg(long = "type", default_value = "connect_error")]
    kind: String,
    /// Fire with this probability (0 to 1).
    #[arg(long)]
    probability: Option<f64>,
    /// Fire on every n-th matching event.
    #[arg(long)]
    every_nth: Option<u64>,
    /// Skip the first n matching events.
    #[arg(long)]
    after: Option<u64>,
    /// Stop after n activations.
    #[arg(long)]
    max_activations: Option<u64>,
    /// Time to live, e.g. 500ms, 30s, 5m.
    #[arg(long)]
    duration: Option<String>,
    /// Allow targets containing PID 1, injectord or the whole host.
    #[arg(long)]
    force: bool,
}

/// The flags of the `fault` object's fields: one per field of any fault
/// type, read from the daemon's spec types, so a new fault family gets its
/// flags without a line here. Values go to the daemon as JSON numbers,
/// booleans or strings; the daemon checks them and names a bad one.
struct FaultFlags(Vec<(clap::Id, &'static str)>);

impl FaultFlags {
    fn add(cmd: clap::Command) -> (clap::Command, Self) {
        let mut flags = Vec::new();
        let cmd = cmd.mut_subcommand("inject", |mut inject| {
            for (field, kinds) in family::fault_fields() {
                let long = field.replace('_', "-");
                let taken = inject
                    .get_arguments()
                    .any(|a| a.get_long() == Some(long.as_str()));
                let long = if taken { format!("fault-{long}") } else { long };
                // clap keeps &'static names; these are made once per run.
                let long: &'static str = long.leak();
                let id = clap::Id::from(&*format!("fault.{field}").leak());
                inject = inject.arg(
                    clap::Arg::new(id.clone())
                        .long(long)
                        .value_name("VALUE")
                        // A bare flag is `true` (e.g. --install-fq).
                        .num_args(0..=1)
                        .default_missing_value("true")
                        .help_heading("Fault fields")
                        .help(format!("`{field}` of {}", kinds.join(", "))),
                );
                flags.push((id, field));
            }
            inject.after_help(format!("Fault types: {}", family::fault_types().join(", ")))
        });
        (cmd, Self(flags))
    }

    /// The given fault fields, as JSON.
    fn values(&self, matches: &clap::ArgMatches) -> Map<String, Value> {
        let Some(inject) = matches.subcommand_matches("inject") else {
            return Map::new();
        };
        self.0
            .iter()
            .filter_map(|(id, field)| {
                let v = inject.get_one::<String>(id.as_str())?;
                // A number or boolean goes as one, anything else as a
                // string ("ECONNREFUSED", "10.0.0.0/8", "1000-2000").
                let json = match serde_json::from_str::<Value>(v) {
                    Ok(n @ (Value::Number(_) | Value::Bool(_))) => n,
                    _ => json!(v),
                };
                Some(((*field).to_string(), json))
            })
            .collect()
    }
}

impl InjectArgs {
    /// The spec as the daemon takes it. No validation here: the daemon
    /// parses the spec and answers with a specific error.
    fn spec(&self, fault_fields: Map<String, Value>) -> anyhow::Result<Value> {
        if let Some(file) = &self.file {
            let text = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            return serde_json::from_str(&text).context("the spec file is not valid JSON");
        }
        let target = if let Some(c) = &self.cgroup {
            json!({"cgroup": c})
        } else if let Some(p) = self.pid {
            json!({"pid": p})
        } else if let Some(c) = &self.container {
            json!({"container": c})
        } else if let Some(p) = &self.pod {
            json!({"pod": p})
        } else if let Some(v) = &self.vm {
            json!({"vm": v})
        } else if let Some(i) = &self.interface {
            match &self.netns {
                Some(ns) => json!({"interface": i, "netns": ns}),
                None => json!({"interface": i}),
            }
        } else {
            anyhow::bail!(
                "give a target: --cgroup, --pid, --container, --pod, --vm or --interface (or -f FILE)"
            )
        };
        let mut fault = Map::new();
        fault.insert("type".into(), json!(self.kind.replace('-', "_")));
        fault.extend(fault_fields);
        let mut trigger = Map::new();
        insert(
            &mut trigger,
            "probability",
            self.probability.map(|p| json!(p)),
        );
        insert(&mut trigger, "every_nth", self.every_nth.map(|n| json!(n)));
        insert(&mut trigger, "after", self.after.map(|n| json!(n)));
        insert(
            &mut trigger,
            "max_activations",
            self.max_activations.map(|n| json!(n)),
        );
        let mut spec = Map::new();
        insert(&mut spec, "name", self.name.as_ref().map(|n| json!(n)));
        spec.insert("target".into(), target);
        spec.insert("fault".into(), Value::Object(fault));
        if !trigger.is_empty() {
            spec.insert("trigger".into(), Value::Object(trigger));
        }
        insert(
            &mut spec,
            "duration",
            self.duration.as_ref().map(|d| json!(d)),
        );
        if self.force {
            spec.insert("force".into(), json!(true));
        }
        Ok(Value::Object(spec))
    }
}

fn insert(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(v) = value {
        map.insert(key.into(), v);
    }
}

/// `{"id": N}` for an all-digits argument, else `{"name": ...}`.
fn selector(s: &str) -> Value {
    match s.parse::<u64>() {
        Ok(id) => json!({"id": id}),
        Err(_) => json!({"name": s}),
    }
}

fn main() -> ExitCode {
    let (cmd, fault_flags) = FaultFlags::add(Cli::command());
    let matches = cmd.get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(&cli, fault_flags.values(&matches)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<ErrorResponse>() {
            Some(resp) => {
                eprintln!("error: {}: {}", resp.code, resp.message);
                if let Some(field) = resp.data.get("field").and_then(Value::as_str) {
                    eprintln!("  field: {field}");
                }
                if let Some(details) = resp.data.get("details") {
                    eprintln!("  details: {details}");
                }
                ExitCode::from(2)
            }
            None => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

fn run(cli: &Cli, fault_fields: Map<String, Value>) -> anyhow::Result<()> {
    if let Command::Experiment(ExperimentCommand::Run {
        plan,
        html,
        report,
        faultspecs,
    }) = &cli.command
    {
        return run_experiment(
            &cli.socket,
            plan,
            faultspecs.as_deref(),
            html.as_deref(),
            report.as_deref(),
            cli.json,
        );
    }
    let mut client = Client::connect(&cli.socket)?;
    let (method, params) = match &cli.command {
        Command::Inject(args) => ("inject", args.spec(fault_fields)?),
        Command::List => ("list", Value::Null),
        Command::Get { fault } => ("get", selector(fault)),
        Command::Remove { fault } => ("remove", selector(fault)),
        Command::Clear => ("clear", Value::Null),
        Command::Capabilities => ("capabilities", Value::Null),
        Command::Status => ("status", Value::Null),
        Command::Experiment(_) => unreachable!("handled above"),
    };
    let result = client.call(method, params)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    match &cli.command {
        Command::Inject(_) => println!(
            "injected fault {} ({})",
            result["id"],
            text(&result["name"])
        ),
        Command::List => print_faults(result["faults"].as_array().map_or(&[], Vec::as_slice)),
        Command::Get { .. } => print_fault(&result),
        Command::Remove { .. } => {
            println!("removed:");
            print_fault(&result["removed"]);
        }
        Command::Clear => println!("removed {} fault(s)", result["removed"]),
        Command::Capabilities => {
            println!("kernel {}", text(&result["kernel"]));
            println!("{:<20} {:<9} DETAIL", "BACKEND", "AVAILABLE");
            for c in result["backends"].as_array().into_iter().flatten() {
                let yes = if c["available"] == true { "yes" } else { "no" };
                println!("{:<20} {yes:<9} {}", text(&c["name"]), text(&c["detail"]));
            }
            println!("\n{:<20} WHAT IT NAMES", "TARGET");
            for t in result["targets"].as_array().into_iter().flatten() {
                println!("{:<20} {}", text(&t["name"]), text(&t["detail"]));
            }
        }
        Command::Status => {
            for (k, v) in result.as_object().into_iter().flatten() {
                println!("{k:<16} {}", text(v));
            }
        }
        Command::Experiment(_) => {}
    }
    Ok(())
}

/// A JSON value for people: strings without quotes.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn target(f: &Value) -> String {
    f["spec"]["target"]
        .as_object()
        .and_then(|t| t.iter().next())
        .map_or_else(|| "-".into(), |(k, v)| format!("{k}:{}", text(v)))
}

fn expires(f: &Value) -> String {
    f["expires_in_ms"].as_u64().map_or_else(
        || "never".into(),
        |ms| format!("{:.1}s", ms as f64 / 1000.0),
    )
}

fn print_faults(faults: &[Value]) {
    println!(
        "{:<6} {:<24} {:<14} {:<32} {:<9} {:>12} {:>12} {:>8}",
        "ID", "NAME", "TYPE", "TARGET", "STATE", "EVALUATIONS", "ACTIVATIONS", "EXPIRES"
    );
    for f in faults {
        println!(
            "{:<6} {:<24} {:<14} {:<32} {:<9} {:>12} {:>12} {:>8}",
            text(&f["id"]),
            text(&f["name"]),
            text(&f["type"]),
            target(f),
            text(&f["state"]),
            text(&f["evaluations"]),
            text(&f["activations"]),
            expires(f)
        );
    }
}

/// A pod or vm target's resolution, on one line (`-` for other targets).
fn workload(w: &Value) -> String {
    match w.as_object() {
        Some(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect::<Vec<_>>()
            .join(" "),
        None => "-".into(),
    }
}

fn print_fault(f: &Value) {
    for (label, value) in [
        ("id", text(&f["id"])),
        ("name", text(&f["name"])),
        ("type", text(&f["type"])),
        ("state", text(&f["state"])),
        ("target", target(f)),
        ("cgroup", text(&f["cgroup"]["path"])),
        ("pod", workload(&f["pod"])),
        ("vm", workload(&f["vm"])),
        ("evaluations", text(&f["evaluations"])),
        ("activations", text(&f["activations"])),
        ("expires", expires(f)),
        ("fault", f["spec"]["fault"].to_string()),
        ("trigger", text(&f["spec"]["trigger"])),
    ] {
        println!("{label:<12} {value}");
    }
}

/// `experiment run`: loads the plan, runs it with a progress display on
/// stderr, prints the table (or the JSON report) and writes the reports
/// asked for. Exits 0 whatever the verdicts: the report says them.
fn run_experiment(
    socket: &std::path::Path,
    plan_path: &std::path::Path,
    faultspecs: Option<&std::path::Path>,
    html: Option<&std::path::Path>,
    report_path: Option<&std::path::Path>,
    json_out: bool,
) -> anyhow::Result<()> {
    use injectord_experiment::{Plan, html as page, progress::Terminal, run};
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("INJECTCTL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let library = faultspecs.map_or_else(
        || {
            let beside = plan_path
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join("faultspecs");
            if beside.is_dir() {
                beside
            } else {
                PathBuf::from("faultspecs")
            }
        },
        std::path::Path::to_path_buf,
    );
    let plan = Plan::load(plan_path, &library)?;
    let mut progress = Terminal::new();
    let report = run(&plan, socket, &mut progress)
        .with_context(|| format!("running experiment {}", plan.name))?;
    progress.clear();
    let json_text = serde_json::to_string_pretty(&report)?;
    if let Some(p) = report_path {
        std::fs::write(p, &json_text).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = html {
        std::fs::write(p, page::render(&report))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if json_out {
        println!("{json_text}");
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
