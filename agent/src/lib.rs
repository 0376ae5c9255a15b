//! The privileged local agent (DESIGN §6). Being built: see issue 4.
