//! haul's engine.
#![deny(missing_docs)]
