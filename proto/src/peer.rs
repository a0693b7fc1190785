//! The peer address of a request on a tonic server, whether the server
//! speaks plaintext (tonic puts a `TcpConnectInfo` in the request
//! extensions) or TLS (a `TlsConnectInfo<TcpConnectInfo>`).

use std::net::SocketAddr;

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// The remote address of the connection a request came on, if known.
pub fn remote_addr(extensions: &http::Extensions) -> Option<SocketAddr> {
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_connect_info() {
        let mut extensions = http::Extensions::new();
        assert_eq!(remote_addr(&extensions), None);
        let addr: SocketAddr = "127.0.0.1:4242".parse().expect("addr");
        extensions.insert(TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(addr),
        });
        assert_eq!(remote_addr(&extensions), Some(addr));
    }
}
