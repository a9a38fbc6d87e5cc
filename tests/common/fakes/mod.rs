//! Fake upstream providers for tests and benchmarks: real HTTP servers on
//! `127.0.0.1:0`, each on a runtime of its own, that count every call they get and can be
//! told to fail in the ways the real services do.
//!
//! - [`FakeTripo`] (`tripo.rs`): Tripo apiv3, reference §1.1, §1.6–1.8.
//! - [`FakeModelScope`] (`modelscope.rs`): ModelScope API-Inference images, §2.
//! - [`FakeOpenAi`] (`openai.rs`): an OpenAI-compatible image API.
//! - [`FakeCos`] (`cos.rs`): a Tencent COS bucket through its S3 interface, §3.
//!
//! The reference is `/work/shared/reference/provider-apis.md`. Test crates reach this
//! module as `common::fakes`; benchmarks include it alone with
//! `#[path = "../tests/common/fakes/mod.rs"] mod fakes;`, so nothing here may depend on
//! the rest of `tests/common`.
#![allow(dead_code, unused_imports)]

mod assets;
mod server;
mod shared;

pub mod cos;
pub mod modelscope;
pub mod openai;
pub mod tripo;

pub use assets::{glb_triangle, png_solid};
pub use cos::{COS_BUCKET, COS_REGION, COS_SECRET_ID, COS_SECRET_KEY, COS_TOKEN, CosOptions, FakeCos};
pub use modelscope::{FakeModelScope, MODELSCOPE_TOKEN, ModelScopeOptions};
pub use openai::{FakeOpenAi, OPENAI_KEY, OpenAiOptions};
pub use shared::{Call, CreateRecord, Fault, Outcome, Route};
pub use tripo::{FakeTripo, TRIPO_KEY, TRIPO_MODELS, TripoOptions};
