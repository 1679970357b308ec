//! Where targets come from: `local` (real PostgreSQL clusters made with initdb/pg_ctl) or an
//! existing target adopted by its connection string. (`aws` comes with its own issue.)

pub mod local;
