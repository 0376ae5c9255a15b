//! nPanel's HTTP API (DESIGN §3).
//!
//! **Not built yet** (issue 3). This crate exists so the workspace has the layout of DESIGN §1;
//! it exports nothing, and `npanel serve` does not listen for HTTP until issue 3 lands.
