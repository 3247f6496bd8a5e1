//! Test support: an independent tree walker and helpers to run the haul binary.
