//! Operator commands: status, jobs, replay, send. IMPLEMENTATION PENDING (issue 6).

use crate::cli::{DatabaseArgs, JobFilter, ReplayArgs, SendArgs, StatusArgs};

pub async fn status(_args: StatusArgs) -> anyhow::Result<i32> {
    anyhow::bail!("not implemented yet")
}
pub async fn jobs_list(_db: DatabaseArgs, _filter: JobFilter, _json: bool) -> anyhow::Result<i32> {
    anyhow::bail!("not implemented yet")
}
pub async fn jobs_show(_db: DatabaseArgs, _id: i64, _json: bool) -> anyhow::Result<i32> {
    anyhow::bail!("not implemented yet")
}
pub async fn replay(_args: ReplayArgs) -> anyhow::Result<i32> {
    anyhow::bail!("not implemented yet")
}
pub async fn send(_args: SendArgs) -> anyhow::Result<i32> {
    anyhow::bail!("not implemented yet")
}
