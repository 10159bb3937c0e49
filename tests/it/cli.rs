//! Tests of the admin command line (written next).
