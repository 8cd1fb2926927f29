//! Host bindings generated from `wit/`: one module per world, the binder's sharing the selector's types and
//! host interface. Only the short list below is used by the rest of `plugin`.

pub(crate) mod selector {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "selector",
    });
}

pub(crate) mod binder {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "binder",
        with: {
            "vipd:policy/types": super::selector::vipd::policy::types,
            "vipd:policy/host": super::selector::vipd::policy::host,
        },
    });
}

pub(crate) use binder::exports::vipd::policy::binding as wit_binding;
pub(crate) use binder::{Binder as BinderWorld, BinderPre};
pub(crate) use selector::exports::vipd::policy::selection::SelectError;
pub(crate) use selector::vipd::policy::host::{Host as HostFunctions, Level};
pub(crate) use selector::vipd::policy::types::{
    Candidate as WitCandidate, Connection as WitConnection, InitError, Protocol as WitProtocol,
    ServerState as WitServerState,
};
pub(crate) use selector::{Selector as SelectorWorld, SelectorPre};
