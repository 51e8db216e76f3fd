//! Embed wgtrain's HTTP predictor in an existing axum application: the
//! application keeps its own route (`GET /`) and mounts the prediction
//! routes under `/wgtrain` (`POST /wgtrain/v1/predict`,
//! `GET /wgtrain/healthz`, `GET /wgtrain/metrics`).
//!
//! Run: `cargo run --release --example embed_server -- MODEL [ADDR]`
//! (ADDR defaults to 127.0.0.1:8080), then for a model of the built-in
//! digits:
//! `curl -s localhost:8080/wgtrain/v1/predict -d '{"inputs": [[0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,0,3,15,2,0,11,8,0,0,4,12,0,0,8,8,0,0,5,8,0,0,9,8,0,0,4,11,0,1,12,7,0,0,2,14,5,10,12,0,0,0,0,6,13,10,0,0,0]]}'`

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::routing::get;
use axum::Router;
use wgtrain::infer::cpu_predictor;
use wgtrain::serve::{self, ServeConfig};
use wgtrain::AnyModel;

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let model_path = PathBuf::from(args.next().context("usage: embed_server MODEL [ADDR]")?);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());

    let model = AnyModel::load(&model_path).with_context(|| format!("loading {}", model_path.display()))?;
    let config = ServeConfig::default();
    // Room for the largest batch; 2 threads, no spinning.
    let predictor = cpu_predictor(&model, config.max_batch, 2, Duration::ZERO)?;
    let predictions = serve::router(predictor, &config)?;

    let app = Router::new()
        .route("/", get(|| async { "an application with a classifier at /wgtrain\n" }))
        .nest("/wgtrain", predictions);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    eprintln!("listening on http://{addr}");
    axum::serve(listener, app).await.context("serving")?;
    Ok(())
}
