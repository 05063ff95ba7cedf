//! The events this service reads (stock stream) and writes (incentives stream); their
//! formats are the contract's ([`ratemesh_contract::stock`],
//! [`ratemesh_contract::incentive`]).

pub use ratemesh_contract::incentive::incentive_changed;
/// Kind of the entries this service appends to the incentives stream.
pub use ratemesh_contract::kinds::INCENTIVE_CHANGED;
/// The core event a stock-stream entry carries; `None` for kinds this service ignores.
pub use ratemesh_contract::stock::decode as decode_stock_entry;
