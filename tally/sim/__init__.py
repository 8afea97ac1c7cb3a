"""The simulators, with their known answers; they import only `tally.core`.

- `traffic`: the platform's input streams (ordinary orders, the stream, the public
  API: `generate`, `live_stream`, JSON lines), built from `config` (`SimConfig`,
  `Simulation`), `orders` (order scripts, the generator's state), `anomalies` (one
  injected real-time break each) and `malformed` (messages that must be dead letters);
- `statements` and `day`: a simulated business day's channel statements, the
  statement-side anomalies and the end-of-day oracle (`recon.simday` writes the
  files and the ClickHouse rows).
"""
