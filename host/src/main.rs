//! `isobar`: parses flags, sets up logging, calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use isobar::ir::Severity;
use isobar::{app, dump, plugin::Limits, scaffold, serve};

#[derive(Parser)]
#[command(
    name = "isobar",
    version,
    about = "A Kubernetes controller host whose routing policy is a Wasm plugin"
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, global = true, env = "ISOBAR_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Yaml,
}

#[derive(clap::Args)]
struct LimitArgs {
    /// Deadline of one plugin call, in milliseconds.
    #[arg(long, default_value_t = 100)]
    plugin_deadline_ms: u64,
    /// Memory cap of one plugin instance, in MiB.
    #[arg(long, default_value_t = 64)]
    plugin_memory_mib: usize,
}

/// Parses KEY=VALUE.
fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// Parses HOST_DIR:GUEST_DIR.
fn dir_mapping(s: &str) -> Result<(PathBuf, String), String> {
    s.split_once(':')
        .map(|(h, g)| (PathBuf::from(h), g.to_string()))
        .ok_or_else(|| format!("expected HOST_DIR:GUEST_DIR, got {s:?}"))
}

#[derive(clap::Args)]
struct GrantArgs {
    /// Environment variable the plugin may see (repeatable). None by default.
    #[arg(long = "plugin-env", value_parser = key_value)]
    env: Vec<(String, String)>,
    /// Host directory the plugin may read, as HOST_DIR:GUEST_DIR (repeatable).
    #[arg(long = "plugin-dir", value_parser = dir_mapping)]
    dirs: Vec<(PathBuf, String)>,
}

impl GrantArgs {
    fn grants(&self) -> isobar::plugin::Grants {
        isobar::plugin::Grants {
            env: self.env.clone(),
            read_only_dirs: self.dirs.clone(),
        }
    }
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            deadline: Duration::from_millis(self.plugin_deadline_ms),
            memory_bytes: self.plugin_memory_mib << 20,
            ..Limits::default()
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Translate manifests through a plugin and print the Envoy resources.
    Translate {
        /// Manifest files or directories.
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
        /// The translator plugin (default: the Ingress plugin).
        #[arg(long)]
        plugin: Option<PathBuf>,
        #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
        output: Format,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        grants: GrantArgs,
    },
    /// Serve a directory of manifests over xDS, translated by a plugin;
    /// both are watched, and a new plugin file is hot-swapped in.
    Serve {
        /// The directory of manifests (watched recursively).
        #[arg(long)]
        manifests: PathBuf,
        /// The translator plugin (default: the Ingress plugin); watched.
        #[arg(long)]
        plugin: Option<PathBuf>,
        /// Where ADS (gRPC, SotW and delta) listens.
        #[arg(long, default_value = serve::DEFAULT_XDS_LISTEN)]
        xds_listen: SocketAddr,
        /// Where the admin endpoint (health, metrics, /debug) listens.
        #[arg(long, default_value = serve::DEFAULT_ADMIN_LISTEN)]
        admin_listen: SocketAddr,
        /// PEM certificate chain for TLS on the xDS port.
        #[arg(long, requires = "xds_tls_key")]
        xds_tls_cert: Option<PathBuf>,
        /// PEM private key for TLS on the xDS port.
        #[arg(long, requires = "xds_tls_cert")]
        xds_tls_key: Option<PathBuf>,
        /// PEM CA bundle: xDS clients must present a certificate it signed (mTLS).
        #[arg(long, requires = "xds_tls_cert")]
        xds_tls_ca: Option<PathBuf>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Work with plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Print what a plugin says about itself and the contract it speaks.
    Inspect {
        path: PathBuf,
        #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
        output: Format,
    },
    /// Create a plugin project that builds into a component and passes its
    /// own tests.
    New {
        /// The plugin's name (and its directory's): lowercase letters,
        /// digits and '-', starting with a letter.
        name: String,
        #[arg(long, value_enum)]
        lang: scaffold::Lang,
        #[arg(long, value_enum, default_value = "translator")]
        world: scaffold::World,
        /// Where to create the project's directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The guest SDK a Rust plugin depends on (default: this build's
        /// repository's guest-sdk).
        #[arg(long)]
        sdk_path: Option<PathBuf>,
    },
}

fn print(value: &impl serde::Serialize, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(value)?),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Translate {
            files,
            plugin,
            output,
            limits,
            grants,
        } => {
            let runtime = app::runtime(limits.limits())?;
            let plugin = app::load_plugin_with(&runtime, plugin.as_deref(), grants.grants())?;
            let translated = app::translate_manifests(plugin, &files);
            for e in &translated.manifest_errors {
                eprintln!("error: {e}");
            }
            for s in &translated.skipped {
                eprintln!("warning: skipping {s}");
            }
            let diagnostics = translated.diagnostics();
            for d in &diagnostics {
                let severity = match d.severity {
                    Severity::Info => "info",
                    Severity::Warning => "warning",
                    Severity::Error => "error",
                };
                eprintln!(
                    "{severity}: {} {}/{}: {}: {}",
                    d.object.kind, d.object.namespace, d.object.name, d.reason, d.message
                );
            }
            let mut doc = dump::snapshot_to_json(translated.pipeline.snapshot())
                .context("rendering the Envoy resources")?;
            doc["diagnostics"] = serde_json::to_value(&diagnostics)?;
            print(&doc, output)?;
            Ok(if translated.manifest_errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Serve {
            manifests,
            plugin,
            xds_listen,
            admin_listen,
            xds_tls_cert,
            xds_tls_key,
            xds_tls_ca,
            limits,
        } => {
            let plugin = match plugin {
                Some(p) => p,
                None => app::default_plugin_path().context(
                    "no plugin given and the default Ingress plugin was not found; pass --plugin X.wasm or set ISOBAR_PLUGIN",
                )?,
            };
            let mut config = serve::Config::new(manifests, plugin);
            config.xds_listen = xds_listen;
            config.admin_listen = admin_listen;
            config.limits = limits.limits();
            if let (Some(cert), Some(key)) = (xds_tls_cert, xds_tls_key) {
                config.xds_tls = Some(serve::tls_from_files(&cert, &key, xds_tls_ca.as_deref())?);
            }
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(serve::run(config, serve::shutdown_signal()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin {
            command: PluginCommand::Inspect { path, output },
        } => {
            let runtime = app::runtime(Limits::default())?;
            print(&app::inspect_file(&runtime, &path)?, output)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin {
            command:
                PluginCommand::New {
                    name,
                    lang,
                    world,
                    dir,
                    sdk_path,
                },
        } => {
            let mut project = scaffold::Project::new(name, lang, world);
            if let Some(sdk_path) = sdk_path {
                project.sdk_path = std::path::absolute(&sdk_path)
                    .with_context(|| format!("resolving {}", sdk_path.display()))?;
            }
            let created = project.create(&dir)?;
            println!(
                "Created the {lang} {world} plugin {:?} in {}.\n\nNext steps:",
                project.name,
                created.display()
            );
            for line in project.next_steps(&created).lines() {
                println!("  {line}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
