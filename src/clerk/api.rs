//! The Clerk Backend API client. IMPLEMENTATION PENDING (issue 5).

use crate::cli::ClerkArgs;

#[derive(Clone)]
pub struct ClerkClient {}

impl ClerkClient {
    pub fn from_args(_args: &ClerkArgs) -> anyhow::Result<Self> {
        Ok(Self {})
    }
}
