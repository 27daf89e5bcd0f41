//! The load generator (issue 9). Empty until that issue lands.
