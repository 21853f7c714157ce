//! Assembling the service: database, receiver, workers, all under one cancellation token.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clerk::signature::WebhookVerifier;
use crate::db::{self, PoolSettings};
use crate::http::descriptors;
use crate::http::server::{self, HttpLimits, ADMIN_MAX_CONNECTIONS, API_MAX_CONNECTIONS};
use crate::http::{admin_router, webhook_router, AdminState, WebhookState};
use crate::queue::ingest::IngestSettings;
use crate::queue::{Ingest, Runner, WorkerSettings};

/// Everything `orgsync serve` is configured with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub database_url: String,
    /// The schema orgsync's tables live in (see [`crate::db::Schema`]).
    pub schema: crate::db::Schema,
    pub listen: SocketAddr,
    /// Where `/healthz`, `/readyz` and `/metrics` are served; `None` serves them on `listen`.
    pub admin_listen: Option<SocketAddr>,
    /// `whsec_...` secrets separated by spaces or commas; `None` uses the stored generated one.
    pub webhook_secrets: Option<String>,
    pub max_body: usize,
    /// Deadlines and connection cap of the listeners (the admin listener's cap is
    /// [`ADMIN_MAX_CONNECTIONS`], the API's at most [`API_MAX_CONNECTIONS`]).
    pub http: HttpLimits,
    pub receiver: bool,
    pub worker: bool,
    pub pool: PoolSettings,
    pub ingest: IngestSettings,
    pub worker_settings: WorkerSettings,
    /// The Clerk Backend API, when a secret key is configured: enables the scheduled resync and
    /// the self-heal of missing hotels.
    pub clerk: Option<crate::clerk::api::ClerkConfig>,
    /// How often the scheduled resync runs; `None` disables it.
    pub resync_interval: Option<std::time::Duration>,
    /// Attempts after which a membership job's missing hotel is fetched from Clerk.
    pub self_heal_after: i32,
    /// Largest share of live hotels the scheduled resync may delete (it refuses beyond).
    pub mass_delete_threshold: f64,
    /// The operator console under `/console` on the admin listener (`ORGSYNC_CONSOLE=on`);
    /// needs `admin_listen`.
    pub console: Option<crate::console::ConsoleConfig>,
    /// Where the `/v1` API listens (`crate::api`); served only when `clerk` is configured too
    /// (every write goes to Clerk first). `None` serves no API.
    pub api_listen: Option<SocketAddr>,
    /// The API's body cap and Clerk deadline.
    pub api: crate::api::ApiSettings,
    /// The change feed's sequencer, which every serving process runs.
    pub feed: crate::changes::SequencerSettings,
}

/// A built service, its sockets bound, ready to run.
pub struct Application {
    pool: PgPool,
    listener: Option<TcpListener>,
    admin_listener: Option<TcpListener>,
    api_listener: Option<TcpListener>,
    verifier: Option<Arc<WebhookVerifier>>,
    config: ServeConfig,
}

impl Application {
    /// Creates the database if needed, migrates it, resolves the webhook secret and binds the
    /// sockets (port 0 picks a free port). Err when the database cannot be prepared, a secret is
    /// malformed or an address cannot be bound.
    pub async fn build(config: ServeConfig) -> anyhow::Result<Self> {
        let options =
            db::connect_options(&config.database_url, &config.schema).context("DATABASE_URL is not a Postgres URL")?;
        let pool = db::lazy_pool(options, &config.pool);
        db::prepare(&config.database_url, &config.schema, &pool)
            .await
            .context("preparing the database (is Postgres reachable at DATABASE_URL?)")?;
        Self::build_with_pool(config, pool).await
    }

    /// As [`Application::build`], on an existing pool whose database is already migrated.
    pub async fn build_with_pool(config: ServeConfig, pool: PgPool) -> anyhow::Result<Self> {
        if config.console.is_some() && config.admin_listen.is_none() {
            anyhow::bail!(
                "ORGSYNC_CONSOLE=on needs ORGSYNC_ADMIN_LISTEN: the console is served on the admin listener only, \
                 never beside the webhook endpoint (which usually faces the internet)"
            );
        }
        let verifier = if config.receiver {
            let secrets = match &config.webhook_secrets {
                Some(s) if !s.trim().is_empty() => s.clone(),
                _ => {
                    let (secret, generated) = db::stored_webhook_secret(&pool).await?;
                    if generated {
                        // Printed once, on the first start, for the operator to paste into Clerk.
                        println!(
                            "orgsync generated a webhook signing secret (kept in the database):\n  {secret}\n\
                             Set it as the signing secret of a Clerk webhook endpoint pointing at\n  \
                             http://<this-host>:{}/webhooks/clerk",
                            config.listen.port()
                        );
                    }
                    secret
                }
            };
            Some(Arc::new(WebhookVerifier::parse(&secrets)?))
        } else {
            None
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let admin_listener = match config.admin_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding {addr}"))?,
            ),
            None => None,
        };
        let api_listener = match (config.api_listen, &config.clerk) {
            (Some(addr), Some(_)) => {
                crate::api::check_exposure(&pool, addr).await?;
                Some(
                    TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("binding {addr} (ORGSYNC_API_LISTEN)"))?,
                )
            }
            (Some(addr), None) => {
                tracing::info!(%addr, "the /v1 API is off: it needs CLERK_SECRET_KEY (every write goes to Clerk first)");
                None
            }
            (None, _) => None,
        };
        Ok(Self {
            pool,
            listener: Some(listener),
            admin_listener,
            api_listener,
            verifier,
            config,
        })
    }

    /// The bound port of the main listener.
    pub fn port(&self) -> u16 {
        self.listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map_or(0, |a| a.port())
    }

    /// The bound port of the admin listener, when separate.
    pub fn admin_port(&self) -> Option<u16> {
        self.admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port())
    }

    /// The bound port of the `/v1` API listener, when it serves.
    pub fn api_port(&self) -> Option<u16> {
        self.api_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Serves until `cancel` fires, then shuts down gracefully: the HTTP servers stop accepting
    /// and finish in-flight requests (within the deadlines of [`HttpLimits`]), the enqueue batchers commit what they hold, and the workers
    /// stop claiming and commit their current batch, whose changes a last sequencer tick makes
    /// readable.
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        let metrics = crate::metrics::install();
        let mut admin = admin_router(AdminState {
            pool: self.pool.clone(),
            metrics: Some(metrics),
        });
        // One client, so one request budget, for the resync (scheduled or started from the
        // console), the self-heal and the API.
        let clerk = match &self.config.clerk {
            Some(args) => Some(crate::clerk::api::ClerkClient::from_config(args)?),
            None => None,
        };
        if let Some(console) = &self.config.console {
            let state = crate::console::ConsoleState::new(
                self.pool.clone(),
                console.clone(),
                clerk.clone(),
                self.config.mass_delete_threshold,
                cancel.clone(),
            );
            admin = admin.merge(crate::console::router(state));
        }

        let mut batchers = Vec::new();
        let mut main = axum::Router::new();
        if let Some(verifier) = self.verifier.take() {
            let (ingest, tasks) = Ingest::start(self.pool.clone(), self.config.ingest.clone());
            batchers = tasks;
            main = main.merge(webhook_router(WebhookState {
                verifier,
                ingest,
                max_body: self.config.max_body,
            }));
        }
        let admin_server = match self.admin_listener.take() {
            Some(l) => {
                let limits = HttpLimits {
                    max_connections: ADMIN_MAX_CONNECTIONS,
                    ..self.config.http
                };
                Some(tokio::spawn(server::serve(l, admin, limits, "admin", cancel.clone())))
            }
            None => {
                main = main.merge(admin);
                None
            }
        };
        let listener = self.listener.take().expect("run is called once");
        let serves_api = self.api_listener.is_some() && clerk.is_some();
        let main_limits = HttpLimits {
            max_connections: self.main_cap_within_descriptors(admin_server.is_some(), serves_api),
            ..self.config.http
        };
        tracing::info!(addr = %listener.local_addr()?, receiver = self.config.receiver, worker = self.config.worker, max_connections = main_limits.max_connections, "orgsync serving");
        let main_server = tokio::spawn(server::serve(listener, main, main_limits, "main", cancel.clone()));

        let api_server = match (self.api_listener.take(), &clerk) {
            (Some(l), Some(client)) => {
                let manager = crate::manage::Manager::new(
                    self.pool.clone(),
                    client.clone(),
                    crate::manage::WriteOptions {
                        clerk_deadline: self.config.api.clerk_deadline,
                    },
                );
                let router = crate::api::router(crate::api::ApiState {
                    manager,
                    max_body: self.config.api.max_body,
                });
                tracing::info!(addr = %l.local_addr()?, "orgsync serving the /v1 API");
                let limits = HttpLimits {
                    max_connections: self.config.http.max_connections.min(API_MAX_CONNECTIONS),
                    ..self.config.http
                };
                Some(tokio::spawn(server::serve(l, router, limits, "api", cancel.clone())))
            }
            _ => None,
        };
        let worker = self.config.worker.then(|| {
            let mut runner = Runner::new(self.pool.clone(), self.config.worker_settings.clone());
            if let Some(client) = &clerk {
                runner = runner.with_heal(Arc::new(crate::resync::SelfHeal::new(
                    self.pool.clone(),
                    client.clone(),
                    self.config.self_heal_after,
                )));
            }
            tokio::spawn(runner.run(cancel.clone()))
        });
        // Whichever replica holds the sequencer lock makes committed changes readable.
        let sequencer = tokio::spawn(crate::changes::sequencer::run(
            self.pool.clone(),
            self.config.feed.clone(),
            cancel.clone(),
        ));
        let scheduler = match (&clerk, self.config.resync_interval) {
            (Some(client), Some(interval)) => Some(tokio::spawn(crate::resync::schedule(
                self.pool.clone(),
                client.clone(),
                interval,
                crate::resync::ResyncOptions {
                    mass_delete_threshold: self.config.mass_delete_threshold,
                    ..Default::default()
                },
                cancel.clone(),
            ))),
            _ => None,
        };

        main_server.await??;
        if let Some(s) = admin_server {
            s.await??;
        }
        if let Some(s) = api_server {
            s.await??;
        }
        // The router (and with it every Ingest handle) is gone: the batchers drain and end.
        for b in batchers {
            let _ = b.await;
        }
        if let Some(w) = worker {
            let _ = w.await;
        }
        if let Some(s) = scheduler {
            let _ = s.await;
        }
        // After the workers: their last commits are moved into the feed before the process ends.
        let _ = sequencer.await;
        if let Err(e) = crate::changes::sequence_now(&self.pool).await {
            tracing::warn!(error = %e, "sequencing the change feed at shutdown failed");
        }
        tracing::info!("orgsync stopped");
        Ok(())
    }
}

impl Application {
    /// Raises the soft descriptor limit to the hard one, and returns the main listener's cap:
    /// the configured one, lowered (with a warning) to what the limit leaves beside the admin
    /// listener's cap and the database pool, so that a full listener can always accept a
    /// newcomer and make room for it.
    fn main_cap_within_descriptors(&self, separate_admin: bool, api: bool) -> usize {
        let limit = descriptors::raise_descriptor_limit();
        let reserved = u64::from(self.config.pool.max_connections)
            + if separate_admin {
                ADMIN_MAX_CONNECTIONS as u64
            } else {
                0
            }
            + if api {
                self.config.http.max_connections.min(API_MAX_CONNECTIONS) as u64
            } else {
                0
            };
        let wanted = self.config.http.max_connections;
        let cap = descriptors::fit_cap(wanted, limit, reserved);
        if cap < wanted {
            tracing::warn!(
                max_connections = wanted,
                open_files_limit = limit,
                lowered_to = cap,
                "the connection cap does not fit in the open-files limit (ulimit -n); lowered"
            );
        }
        cap
    }
}

/// Cancels `token` on SIGINT or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        token.cancel();
    });
}
