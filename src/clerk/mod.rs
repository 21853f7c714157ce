//! Everything that speaks Clerk: webhook event shapes, Svix signature checks, the Backend API.

pub mod api;
pub mod envelope;
pub mod events;
pub mod ids;
pub mod role_set;
pub mod row_text;
pub mod signature;

pub use envelope::{Envelope, EnvelopeError};
pub use events::{ClerkEvent, EventParseError, Invitation, Membership, Organization, Permission, Role, User};
pub use ids::{HotelId, IdError, InvitationId, PermissionId, RoleId, UserId};
pub use role_set::{RoleSet, RoleSetId, RoleSetItem, RoleSetKey};
