//! Assembling the service: database, receiver, workers, all under one cancellation token.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clerk::signature::WebhookVerifier;
use crate::db::{self, PoolSettings};
use crate::http::server::{self, HttpLimits, ADMIN_MAX_CONNECTIONS};
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
    /// [`ADMIN_MAX_CONNECTIONS`]).
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
}

/// A built service, its sockets bound, ready to run.
pub struct Application {
    pool: PgPool,
    listener: Option<TcpListener>,
    admin_listener: Option<TcpListener>,
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
        Ok(Self {
            pool,
            listener: Some(listener),
            admin_listener,
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

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Serves until `cancel` fires, then shuts down gracefully: the HTTP servers stop accepting
    /// and finish in-flight requests (within the deadlines of [`HttpLimits`]), the enqueue batchers commit what they hold, and the workers
    /// stop claiming and commit their current batch.
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        let metrics = crate::metrics::install();
        let mut admin = admin_router(AdminState {
            pool: self.pool.clone(),
            metrics: Some(metrics),
        });
        if let Some(console) = &self.config.console {
            let clerk = match &self.config.clerk {
                Some(args) => Some(crate::clerk::api::ClerkClient::from_config(args)?),
                None => None,
            };
            let state = crate::console::ConsoleState::new(
                self.pool.clone(),
                console.clone(),
                clerk,
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
        tracing::info!(addr = %listener.local_addr()?, receiver = self.config.receiver, worker = self.config.worker, "orgsync serving");
        let main_server = tokio::spawn(server::serve(listener, main, self.config.http, "main", cancel.clone()));

        let clerk = match &self.config.clerk {
            Some(args) => Some(crate::clerk::api::ClerkClient::from_config(args)?),
            None => None,
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
        tracing::info!("orgsync stopped");
        Ok(())
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
