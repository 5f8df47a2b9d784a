//! Writes the queued counts (see `counts`) to Redis in batches, off the request path, reads
//! back the fleet's totals, and fires a detector whose total crossed its threshold on exactly
//! one replica.

use super::Sink;
use super::counts::{Count, SLICES, coalesce, width};
use super::redis::Remote;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Writes counts as they come, in batches, until `stop`.
pub async fn flush(remote: Arc<Remote>, sink: Arc<dyn Sink>, stop: CancellationToken) {
    let Some(mut rx) = remote.counts.rx.lock().ok().and_then(|mut r| r.take()) else {
        return;
    };
    let mut batch = Vec::with_capacity(256);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            n = rx.recv_many(&mut batch, 256) => if n == 0 { return },
        }
        let batch_of = coalesce(&mut batch);
        let attempt = tokio::time::timeout(remote.settings.timeout, write(&remote, &batch_of));
        match attempt.await {
            Ok(Ok(totals)) => {
                for ((count, _), total) in batch_of.iter().zip(totals) {
                    crossed(&remote, sink.as_ref(), count, total).await;
                }
            }
            Ok(Err(e)) => {
                remote.counts.forget_added();
                tracing::debug!(error = %e, "shared state: counts not written");
            }
            Err(_) => {
                remote.counts.forget_added();
                tracing::debug!("shared state: counts not written in time");
            }
        }
        batch.clear();
    }
}

/// Writes `batch` in one pipeline; the fleet's total in each count's window.
async fn write(remote: &Remote, batch: &[(Count, i64)]) -> redis::RedisResult<Vec<u32>> {
    let mut pipe = redis::pipe();
    for (count, events) in batch {
        let width = width(count.window);
        let slice = count.at.div_euclid(width);
        let slot = |s: i64| remote.keys.of(&format!("n:{}:{s}", count.key));
        let ttl = count.window.as_secs() as i64 + 2 * width;
        match &count.member {
            Some(member) => pipe.sadd(slot(slice), member).ignore(),
            None => pipe.incr(slot(slice), *events).ignore(),
        };
        pipe.expire(slot(slice), ttl).ignore();
        let slots: Vec<String> = (0..=SLICES).map(|back| slot(slice - back)).collect();
        match &count.member {
            Some(_) => pipe.sunion(slots),
            None => pipe.mget(slots),
        };
    }
    let mut conn = remote.conn().await?;
    let replies: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
    Ok(batch
        .iter()
        .zip(replies)
        .map(|((count, _), reply)| total(count, reply))
        .collect())
}

fn total(count: &Count, reply: redis::Value) -> u32 {
    let items = match reply {
        redis::Value::Array(items) | redis::Value::Set(items) => items,
        _ => return 0,
    };
    match count.member {
        Some(_) => items.len() as u32,
        None => items
            .iter()
            .filter_map(|v| redis::from_redis_value_ref::<Option<u32>>(v).ok().flatten())
            .sum(),
    }
}

/// After a count: remembers the total, and fires its detector when the total is over the
/// threshold and no replica fired for this subject in this window yet.
async fn crossed(remote: &Remote, sink: &dyn Sink, count: &Count, total: u32) {
    remote.counts.remember(&count.key, total, count.at);
    let Some(fire) = &count.fire else {
        return;
    };
    if total <= fire.threshold {
        return;
    }
    let what = format!("fired:{}:{}", fire.detector, fire.key);
    if remote.once(&what, count.window.as_secs()).await {
        sink.fire(fire, total, count.at);
    }
}
