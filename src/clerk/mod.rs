//! Everything that speaks Clerk: webhook event shapes, Svix signature checks, the Backend API.

pub mod api;
pub mod events;
pub mod ids;
pub mod signature;

pub use events::{ClerkEvent, Envelope, EnvelopeError, EventParseError, Membership, Organization, User};
pub use ids::{HotelId, IdError, UserId};
