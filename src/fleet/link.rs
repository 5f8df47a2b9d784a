//! Connections to Redis as `[state] url` names it: one server, a master found through
//! Sentinels, or a Cluster; over TLS with `[state] ca` for `rediss`, as the ACL user.

use super::{Settings, Target};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, RedisResult, Value};
use std::time::Duration;

/// One connection, of whichever kind the target needs.
#[derive(Clone)]
pub enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

fn certificates(s: &Settings) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: s.ca.clone(),
    }
}

fn with_credentials(mut info: redis::ConnectionInfo, s: &Settings) -> redis::ConnectionInfo {
    let mut redis = info.redis_settings().clone();
    if let Some(user) = &s.username {
        redis = redis.set_username(user);
    }
    if let Some(password) = &s.password {
        redis = redis.set_password(password);
    }
    info = info.set_redis_settings(redis);
    info
}

/// Opens a connection whose every answer must come within `answer`, and whose connecting
/// must be done within `s.timeout`.
pub async fn connect(s: &Settings, answer: Duration) -> RedisResult<Conn> {
    match &s.target {
        Target::Single { url } => {
            let info = with_credentials(
                redis::IntoConnectionInfo::into_connection_info(url.as_str())?,
                s,
            );
            let client = if url.starts_with("rediss://") {
                redis::Client::build_with_tls(info, certificates(s))?
            } else {
                redis::Client::open(info)?
            };
            single(&client, s, answer).await
        }
        Target::Sentinel {
            nodes,
            master,
            db,
            tls,
        } => {
            let client = sentinel_master(s, nodes, master, *db, *tls).await?;
            single(&client, s, answer).await
        }
        Target::Cluster { nodes, tls } => {
            let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                .connection_timeout(s.timeout)
                .response_timeout(answer);
            if let Some(user) = &s.username {
                builder = builder.username(user);
            }
            if let Some(password) = &s.password {
                builder = builder.password(password.clone());
            }
            if *tls {
                builder = builder.tls(redis::TlsMode::Secure).certs(certificates(s));
            }
            let client = builder.build()?;
            Ok(Conn::Cluster(client.get_async_connection().await?))
        }
    }
}

async fn single(client: &redis::Client, s: &Settings, answer: Duration) -> RedisResult<Conn> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(s.timeout))
        .set_response_timeout(Some(answer));
    let conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    Ok(Conn::Single(conn))
}

/// The client of the master the Sentinels name now.
async fn sentinel_master(
    s: &Settings,
    nodes: &[String],
    master: &str,
    db: i64,
    tls: bool,
) -> RedisResult<redis::Client> {
    let mut addresses = Vec::new();
    for node in nodes {
        let info = redis::IntoConnectionInfo::into_connection_info(node.as_str())?;
        addresses.push(info.addr().clone());
    }
    let mut builder = redis::sentinel::SentinelClientBuilder::new(
        addresses,
        master,
        redis::sentinel::SentinelServerType::Master,
    )?
    .set_client_to_redis_db(db);
    if let Some(user) = &s.username {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(password) = &s.password {
        builder = builder.set_client_to_redis_password(password);
    }
    if tls {
        builder = builder
            .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
            .set_client_to_redis_certificates(certificates(s))
            .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure)
            .set_client_to_sentinel_certificates(certificates(s));
    }
    let mut client = builder.build()?;
    client.async_get_client().await
}
