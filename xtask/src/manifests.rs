//! Manifest text that the benchmarks and the soak give the gateway in standalone mode.

use std::net::SocketAddr;

/// A free TCP port on loopback (bound and released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// GatewayClass `cedille` and Gateway `default/<name>` on 127.0.0.1 with `listeners` (YAML
/// list items, each starting `  - `).
pub fn gateway(name: &str, listeners: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: cedille}}
spec: {{controllerName: cedille.io/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: default}}
spec:
  gatewayClassName: cedille
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
  listeners:
{listeners}
"#
    )
}

/// Service `default/<name>` (port 80, named http) and its EndpointSlice at `backend`.
pub fn service(name: &str, backend: SocketAddr) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: {}}}]
endpoints: [{{addresses: ["{}"]}}]
"#,
        backend.port(),
        backend.ip()
    )
}
