//! `isobar`: parses flags, sets up logging, calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use isobar::plugin::{Limits, load};
use isobar::{dump, scaffold, serve};

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

/// Parses NAME=@FILE (a plugin's configuration file).
fn plugin_config(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once("=@") {
        Some((n, f)) if !n.is_empty() && !f.is_empty() => Ok((n.to_string(), PathBuf::from(f))),
        _ => Err(format!("expected NAME=@FILE.json, got {s:?}")),
    }
}

/// The plugins to run.
#[derive(clap::Args)]
struct PluginArgs {
    /// A translator plugin (repeatable; default: the Ingress plugin, but
    /// none with --follow-plugins, whose Plugin objects may bring them).
    /// Each owns the root kinds it declares; two claiming one kind are
    /// refused.
    #[arg(long = "plugin")]
    plugins: Vec<PathBuf>,
    /// A policy plugin (repeatable): every merged virtual host goes through
    /// the policies in the order given.
    #[arg(long = "policy")]
    policies: Vec<PathBuf>,
    /// Configuration (a JSON object) for the plugin that declares itself
    /// NAME, as NAME=@FILE.json (repeatable).
    #[arg(long = "plugin-config", value_parser = plugin_config)]
    configs: Vec<(String, PathBuf)>,
}

impl PluginArgs {
    /// The translators given, or the default Ingress plugin.
    fn translators(&self) -> anyhow::Result<Vec<PathBuf>> {
        if !self.plugins.is_empty() {
            return Ok(self.plugins.clone());
        }
        Ok(vec![load::default_plugin_path().context(
            "no plugin given and the default Ingress plugin was not found; pass --plugin X.wasm or set ISOBAR_PLUGIN",
        )?])
    }
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
    /// Let the plugin read the host's clocks. Without it the wall clock
    /// reads the Unix epoch and time moves only by the plugin's own waits.
    #[arg(long = "plugin-clocks")]
    clocks: bool,
    /// Let the plugin read the host's randomness. Without it "random"
    /// bytes are a fixed sequence.
    #[arg(long = "plugin-random")]
    random: bool,
}

impl GrantArgs {
    fn grants(&self) -> isobar::plugin::Grants {
        isobar::plugin::Grants {
            env: self.env.clone(),
            read_only_dirs: self.dirs.clone(),
            clocks: self.clocks,
            random: self.random,
            ..Default::default()
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

/// Serving a cluster (ignored with --manifests).
#[derive(clap::Args)]
struct ClusterArgs {
    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current one).
    #[arg(long)]
    context: Option<String>,
    /// Watch only this namespace (default: all).
    #[arg(long)]
    namespace: Option<String>,
    /// Label selector narrowing the plugin's root objects (e.g. Ingresses).
    #[arg(long)]
    label_selector: Option<String>,
    /// Initial lists streamed over the watch (Kubernetes WatchList).
    #[arg(long, value_enum, default_value = "auto")]
    streaming_lists: isobar::source::kube::StreamingLists,
    /// Address(es) written to Ingress status.loadBalancer (IP or hostname).
    #[arg(long, value_delimiter = ',', conflicts_with = "ingress_status_service")]
    ingress_status_address: Vec<String>,
    /// NAMESPACE/NAME of a LoadBalancer Service (Envoy's) whose addresses
    /// go into Ingress status.
    #[arg(long)]
    ingress_status_service: Option<String>,
    /// Never write status (read-only).
    #[arg(long)]
    no_status: bool,
    /// Status writes per second, and how many may go at once.
    #[arg(long, default_value_t = 50.0)]
    status_qps: f64,
    #[arg(long, default_value_t = 100)]
    status_burst: u32,
    /// Write status without a leader election (one replica only).
    #[arg(long)]
    disable_leader_election: bool,
    /// Namespace of the leader Lease (default: this pod's, else "default").
    #[arg(long)]
    leader_election_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, default_value = "isobar")]
    leader_election_lease: String,
    /// This replica's identity in the election (default: $POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    leader_election_identity: Option<String>,
}

impl ClusterArgs {
    fn options(self) -> anyhow::Result<serve::cluster::ClusterOptions> {
        use isobar::writeback::{IngressAddress, WritebackConfig};
        let identity = self
            .leader_election_identity
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("isobar-{}", std::process::id()));
        let ingress_address = match (
            &self.ingress_status_service,
            self.ingress_status_address.is_empty(),
        ) {
            (Some(s), _) => {
                let (namespace, name) = s.split_once('/').with_context(|| {
                    format!("--ingress-status-service wants NAMESPACE/NAME, got {s:?}")
                })?;
                IngressAddress::Service {
                    namespace: namespace.into(),
                    name: name.into(),
                }
            }
            (None, false) => IngressAddress::Fixed(self.ingress_status_address.clone()),
            (None, true) => IngressAddress::None,
        };
        let writeback = (!self.no_status).then(|| WritebackConfig {
            ingress_address,
            qps: self.status_qps,
            burst: self.status_burst,
            instance: Some(identity.clone()),
            ..WritebackConfig::default()
        });
        let leader = (!self.no_status && !self.disable_leader_election).then(|| {
            let namespace = self
                .leader_election_namespace
                .clone()
                .or_else(isobar::leader::own_namespace)
                .unwrap_or_else(|| "default".into());
            let mut l = isobar::leader::LeaderConfig::new(namespace, identity);
            l.lease = self.leader_election_lease.clone();
            l
        });
        Ok(serve::cluster::ClusterOptions {
            kubeconfig: self.kubeconfig,
            context: self.context,
            watch: isobar::source::kube::WatchConfig {
                namespace: self.namespace,
                label_selector: self.label_selector,
                streaming_lists: self.streaming_lists,
            },
            writeback,
            leader,
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Translate manifests through a plugin and print the Envoy resources.
    Translate {
        /// Manifest files or directories.
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        plugins: PluginArgs,
        #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
        output: Format,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        grants: GrantArgs,
    },
    /// Serve a directory of manifests, or a cluster, over xDS, translated
    /// by a plugin; the plugin file is watched and hot-swapped.
    Serve {
        /// The directory of manifests (watched recursively). Without it,
        /// the cluster from --kubeconfig, $KUBECONFIG or in-cluster config.
        #[arg(long)]
        manifests: Option<PathBuf>,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Where compiled plugins are cached (default: ~/.cache/isobar/components).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// In a cluster: also load the translators and policies that Plugin
        /// objects (isobar.dev/v1alpha1) name, pulled from OCI by digest.
        #[arg(long)]
        follow_plugins: bool,
        /// With --follow-plugins: a PEM file of CA certificates to trust
        /// beside the system's when pulling (a registry behind a private CA).
        #[arg(long = "registry-ca")]
        registry_ca: Option<PathBuf>,
        /// Plugins, each file watched and hot-swapped alone.
        #[command(flatten)]
        plugins: PluginArgs,
        /// A reconciler plugin (an operator) to run beside it (repeatable);
        /// watched and hot-swapped. Serving files, its actions go to an
        /// in-memory cluster shown at /debug/cluster.
        #[arg(long = "reconciler")]
        reconcilers: Vec<PathBuf>,
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
        /// Serve xDS on a non-loopback address without mTLS. Refused by
        /// default: SDS hands TLS private keys to whoever connects.
        #[arg(long)]
        xds_allow_insecure: bool,
        /// Also serve /healthz and /readyz (nothing else) here: the
        /// kubelet's probes, with --admin-listen on loopback.
        #[arg(long)]
        probe_listen: Option<SocketAddr>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Issue the CA and certificates that secure xDS with mutual TLS, as
    /// Secrets (isobar-xds-ca, isobar-xds-server, isobar-xds-client) or files.
    Certgen {
        /// Namespace of the Secrets and of isobar's Service.
        #[arg(long, default_value = "isobar-system")]
        namespace: String,
        /// Name of isobar's xDS Service (its DNS names are in the server certificate).
        #[arg(long, default_value = "isobar")]
        service: String,
        #[arg(long, default_value = "cluster.local")]
        cluster_domain: String,
        /// Validity of the certificates in days (the CA: five times as long).
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Write PEM files here instead of Secrets.
        #[arg(long)]
        output_dir: Option<PathBuf>,
        /// Replace existing Secrets or files.
        #[arg(long)]
        overwrite: bool,
        /// Use the pod's service account (the default when in a cluster).
        #[arg(long)]
        in_cluster: bool,
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
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
    /// Push a plugin to an OCI registry in the Wasm OCI artifact layout;
    /// prints the manifest digest (what a Plugin object pins).
    Push {
        path: PathBuf,
        /// REGISTRY/REPO:TAG (or @sha256:...).
        reference: String,
        #[command(flatten)]
        registry: RegistryFlags,
    },
    /// Pull a plugin from an OCI registry (digests checked) into a file;
    /// prints the manifest digest.
    Pull {
        /// REGISTRY/REPO@sha256:... (or :TAG).
        reference: String,
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        #[command(flatten)]
        registry: RegistryFlags,
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

/// How `plugin push` and `plugin pull` reach a registry.
#[derive(clap::Args)]
struct RegistryFlags {
    /// Plain HTTP (a registry on loopback); HTTPS is verified otherwise.
    #[arg(long)]
    insecure: bool,
    /// Registry user (the password from ISOBAR_REGISTRY_PASSWORD).
    #[arg(long, env = "ISOBAR_REGISTRY_USERNAME")]
    username: Option<String>,
    /// A PEM file of CA certificates to trust beside the system's (a
    /// registry behind a private CA).
    #[arg(long = "registry-ca")]
    registry_ca: Option<PathBuf>,
}

/// The certificates of a PEM file, as the registry client takes them.
fn read_ca(path: Option<&std::path::Path>) -> anyhow::Result<Vec<Vec<u8>>> {
    match path {
        None => Ok(Vec::new()),
        Some(p) => Ok(vec![
            std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        ]),
    }
}

impl RegistryFlags {
    fn access(self) -> anyhow::Result<isobar::oci::Access> {
        Ok(isobar::oci::Access {
            extra_roots: read_ca(self.registry_ca.as_deref())?,
            insecure: self.insecure,
            basic: self.username.map(|u| {
                (
                    u,
                    std::env::var("ISOBAR_REGISTRY_PASSWORD").unwrap_or_default(),
                )
            }),
            timeout: None,
        })
    }
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
            plugins,
            output,
            limits,
            grants,
        } => {
            let runtime = load::runtime(limits.limits())?;
            let configs = load::read_configs(&plugins.configs)?;
            let loaded = load::load_plugins(
                &runtime,
                &plugins.translators()?,
                &plugins.policies,
                &configs,
                grants.grants(),
            )?;
            let translated = isobar::pipeline::manifests::translate(loaded, &files);
            for e in &translated.manifest_errors {
                eprintln!("error: {e}");
            }
            for s in &translated.skipped {
                eprintln!("warning: skipping {s}");
            }
            let diagnostics = translated.diagnostics();
            for d in &diagnostics {
                eprintln!(
                    "{}: {} {}/{}: {}: {}",
                    d.severity.as_str(),
                    d.object.kind,
                    d.object.namespace,
                    d.object.name,
                    d.reason,
                    d.message
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
        Command::Certgen {
            namespace,
            service,
            cluster_domain,
            days,
            output_dir,
            overwrite,
            in_cluster: _,
            kubeconfig,
        } => {
            let config = isobar::certgen::CertgenConfig {
                namespace: namespace.clone(),
                service,
                cluster_domain,
                days,
            };
            let certs = isobar::certgen::generate(&config)?;
            match output_dir {
                Some(dir) => isobar::certgen::write_files(&dir, &certs, overwrite)?,
                None => {
                    let runtime =
                        tokio::runtime::Runtime::new().context("starting the async runtime")?;
                    runtime.block_on(async {
                        let client = serve::cluster::client(kubeconfig.as_ref(), None).await?;
                        isobar::certgen::write_secrets(client, &namespace, &certs, overwrite).await
                    })?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            manifests,
            cluster,
            cache_dir,
            follow_plugins,
            registry_ca,
            plugins,
            reconcilers,
            xds_listen,
            admin_listen,
            xds_tls_cert,
            xds_tls_key,
            xds_tls_ca,
            xds_allow_insecure,
            probe_listen,
            limits,
        } => {
            // Following Plugin objects, the translators may all come from them.
            let translators = if follow_plugins && plugins.plugins.is_empty() {
                Vec::new()
            } else {
                plugins.translators()?
            };
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let source = match manifests {
                Some(dir) => serve::Source::Manifests(dir),
                None => {
                    let options = cluster.options()?;
                    serve::Source::Cluster(runtime.block_on(serve::cluster::connect(options))?)
                }
            };
            let mut config = serve::Config::with_source(source, PathBuf::new());
            config.plugins = translators;
            config.policies = plugins.policies;
            config.plugin_configs = plugins.configs;
            config.reconcilers = reconcilers;
            if cache_dir.is_some() {
                config.cache_dir = cache_dir;
            }
            if follow_plugins && config.source.is_manifests() {
                anyhow::bail!(
                    "--follow-plugins follows Plugin objects in a cluster; serving manifests, pass --plugin and --policy"
                );
            }
            config.follow_plugins = follow_plugins;
            config.registry_roots = read_ca(registry_ca.as_deref())?;
            config.xds_listen = xds_listen;
            config.admin_listen = admin_listen;
            config.xds_allow_insecure = xds_allow_insecure;
            config.probe_listen = probe_listen;
            config.limits = limits.limits();
            if let (Some(cert), Some(key)) = (xds_tls_cert, xds_tls_key) {
                config.xds_tls = Some(serve::tls_from_files(&cert, &key, xds_tls_ca.as_deref())?);
            }
            runtime.block_on(serve::run(config, serve::shutdown_signal()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin {
            command: PluginCommand::Inspect { path, output },
        } => {
            let runtime = load::runtime(Limits::default())?;
            print(&load::inspect_file(&runtime, &path)?, output)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin {
            command:
                PluginCommand::Push {
                    path,
                    reference,
                    registry,
                },
        } => {
            let runtime = load::runtime(Limits::default())?;
            let tokio = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let digest = tokio.block_on(load::push_file(
                &runtime,
                &path,
                &reference,
                &registry.access()?,
            ))?;
            println!("{digest}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin {
            command:
                PluginCommand::Pull {
                    reference,
                    output,
                    registry,
                },
        } => {
            let runtime = load::runtime(Limits::default())?;
            let tokio = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let digest = tokio.block_on(load::pull_file(
                &runtime,
                &reference,
                &registry.access()?,
                &output,
            ))?;
            println!("{digest}");
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
