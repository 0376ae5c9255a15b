//! Metric names of the WebSocket fan-out (a contract with `dashboards/`). No job or account labels.

/// Open WebSocket connections in this process (gauge).
pub const WS_CONNECTIONS: &str = "npanel_ws_connections";
/// Upgrades refused because `ws.max_connections` was reached.
pub const WS_REFUSED_TOTAL: &str = "npanel_ws_refused_total";
/// Messages sent to sockets, by `type`.
pub const WS_MESSAGES_SENT_TOTAL: &str = "npanel_ws_messages_sent_total";
/// Times a socket fell behind the broadcast and was sent a fresh snapshot instead.
pub const WS_LAGGED_TOTAL: &str = "npanel_ws_lagged_total";
/// Events read from the Redis stream by the hub.
pub const WS_EVENTS_RECEIVED_TOTAL: &str = "npanel_ws_events_received_total";
