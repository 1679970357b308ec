//! Where targets come from: `local` (real PostgreSQL clusters made with initdb/pg_ctl, or a
//! database on a pool of existing instances), `aws`
//! (Aurora PostgreSQL through the RDS API), or an existing target adopted by its connection string.

pub mod aws;
pub mod local;
pub mod pool;
