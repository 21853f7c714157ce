//! Full resync from the Clerk Backend API (scheduled and `orgsync resync`), and the self-heal
//! of missing hotels. IMPLEMENTATION PENDING (issue 5).

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::clerk::api::ClerkClient;
use crate::clerk::HotelId;
use crate::cli::ResyncArgs;

pub async fn command(_args: ResyncArgs) -> anyhow::Result<i32> {
    anyhow::bail!("resync is not implemented yet")
}

/// Runs the resync every `interval` until `cancel` fires (one process of a fleet at a time).
pub async fn schedule(_pool: PgPool, _client: ClerkClient, _interval: Duration, cancel: CancellationToken) {
    cancel.cancelled().await
}

/// Fetches hotels that membership jobs wait for.
pub struct SelfHeal {}

impl SelfHeal {
    pub fn new(_pool: PgPool, _client: ClerkClient, _after_attempts: i32) -> Self {
        Self {}
    }
}

impl crate::queue::runner::Heal for SelfHeal {
    fn heal(&self, _hotel: HotelId, _attempts: i32) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
