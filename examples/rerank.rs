//! Rerank passages for a query with the 360Zhinao reranker, best first.
//!
//!     cargo run --release --example rerank -- assets/tiny-reranker

use zhinao::gpu::{Context, GpuOptions};
use zhinao::models::reranker::{Reranker, ScorePosition};

fn main() -> zhinao::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "assets/tiny-reranker".into());
    let r = Reranker::load(Context::new(&GpuOptions::default())?, dir.as_ref(), &mut |_, _| {})?;
    let passages = vec!["北京是中国的首都。".to_string(), "今天天气很好。".to_string()];
    let scores = r.score("中国的首都是哪里？", &passages, ScorePosition::default())?;
    let mut order: Vec<usize> = (0..passages.len()).collect();
    order.sort_by(|&a, &b| scores[b].prob.total_cmp(&scores[a].prob));
    for i in order {
        println!("{:.4}  {}", scores[i].prob, passages[i]);
    }
    Ok(())
}
