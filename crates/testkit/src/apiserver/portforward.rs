//! `pods/{name}/portforward` over WebSocket (`v4.channel.k8s.io`), the protocol kube-rs
//! speaks: the server connects to the Pod's IP and relays bytes.
//!
//! Framing: every binary message starts with a channel byte. Port `i` of the request has
//! data channel `2i` and error channel `2i + 1`; each channel's first message from the
//! server carries the port number (little endian), after which data flows both ways on
//! the data channel. Only the first port of a request is served (kube-rs and Rudder ask
//! for one).

use std::net::SocketAddr;

use futures::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Message, Role};

use super::handler::{Body, full};
use super::status::{ApiError, ApiResult};

const PROTOCOL: &str = "v4.channel.k8s.io";

/// Answers the upgrade and relays between the WebSocket and `pod:port`.
pub(crate) fn start(req: Request<Incoming>, pod: SocketAddr) -> ApiResult<Response<Body>> {
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .cloned()
        .ok_or_else(|| ApiError::bad_request("port-forward needs a WebSocket upgrade"))?;
    let offered = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(str::trim))
        .any(|p| p == PROTOCOL);
    if !offered {
        return Err(ApiError::bad_request(format!(
            "port-forward speaks {PROTOCOL} only"
        )));
    }
    let port = pod.port();
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        relay(ws, pod, port).await;
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut resp = Response::new(full(""));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(PROTOCOL),
    );
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    Ok(resp)
}

async fn relay<S>(ws: WebSocketStream<S>, pod: SocketAddr, port: u16)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let p = port.to_le_bytes();
    // Each channel announces its port first.
    for channel in [0u8, 1u8] {
        if tx
            .send(Message::binary(vec![channel, p[0], p[1]]))
            .await
            .is_err()
        {
            return;
        }
    }
    let tcp = match tokio::net::TcpStream::connect(pod).await {
        Ok(t) => t,
        Err(e) => {
            let mut msg = vec![1u8];
            msg.extend_from_slice(format!("error forwarding port {port} to pod: {e}").as_bytes());
            let _ = tx.send(Message::binary(msg)).await;
            let _ = tx.close().await;
            return;
        }
    };
    let (mut read, mut write) = tcp.into_split();
    let to_pod = async {
        while let Some(Ok(msg)) = rx.next().await {
            match msg {
                Message::Binary(data)
                    if data.first() == Some(&0) && write.write_all(&data[1..]).await.is_err() =>
                {
                    break;
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = write.shutdown().await;
    };
    let from_pod = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match read.read(&mut buf[1..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf[0] = 0;
                    if tx.send(Message::binary(buf[..=n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.close().await;
    };
    tokio::join!(to_pod, from_pod);
}
