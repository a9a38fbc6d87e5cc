//! Outbound notifications of finished tasks. A task may name a `webhook_url`; when it
//! ends, kiln POSTs a signed message there, and tries again until it is taken. Where such
//! a message may go is [`destination`]'s concern; when to try again is [`Schedule`]'s.

pub mod destination;
mod schedule;

pub use destination::{DestinationError, check_destination, resolve_destination};
pub use schedule::Schedule;
