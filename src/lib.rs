//! orgsync keeps an application's hotels (Clerk organizations), users and memberships in step
//! with Clerk: a signed webhook receiver that stores events durably, a retrying consumer that
//! reconciles them with newer-wins rules, and a full resync from the Clerk Backend API.

pub mod api;
pub mod app;
pub mod changes;
pub mod clerk;
pub mod cli;
pub mod console;
pub mod db;
pub mod http;
pub mod manage;
pub mod metrics;
pub mod ops;
pub mod queue;
pub mod reconcile;
pub mod resync;
pub mod telemetry;
pub mod tokens;
