//! Outbound notifications of finished tasks. A task may name a `webhook_url`; when it
//! ends, kiln POSTs a signed message there. Where such a message may go is
//! [`destination`]'s concern.

pub mod destination;

pub use destination::{DestinationError, check_destination, resolve_destination};
