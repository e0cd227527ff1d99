//! What the three picortex programs agree on, defined once: the `org.picortex.Provision1` D-Bus
//! interface (names, proxy, limits), the rules that turn a Linq chat id into a Unix user, a home,
//! a slice and unit names, and the turn request/result documents that cross the unit boundary.
//! Everything here is pure and checked at every door: the helper re-validates what the gateway
//! already validated.

pub mod agent_env;
pub mod bus;
pub mod consent;
pub mod egress;
pub mod gateway;
pub mod ids;
pub mod turn;
