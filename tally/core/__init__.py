"""The pure core of tally: the domain as plain data and functions.

No I/O: nothing here reads a clock, a file, the network or the environment, and
nothing imports a layer above (tests/test_layers.py checks it). Time is event time,
given with the data; where a wall-clock time is recorded, the caller passes it in. The
stream workers (`streams`), the sinks, the end-of-day runs (`recon`) and the simulator
drive these functions and do the I/O around them. Names follow the domain glossary
(domain.md): break, long, short, reversal, suspense entry, write-off, clearing,
settlement, statement, channel evidence (sync, notify, query).

Modules, from the bottom up:

    money        currencies and exact amounts in integer minor units
    policy       a channel's policy (Mode: pessimistic / optimistic) and business day
    eventtime    event time: epoch milliseconds <-> RFC 3339 text
    deadletter   InvalidEvent with its reason codes; DeadLetter, a message set aside
    validation   the event contract's field checks (ids, amounts, timestamps)
    records      Transaction (our order) and Callback (channel evidence); OrderType,
                 OrderStatus, EvidenceSource, ChannelStatus
    events       the event contract: parse_transaction / parse_callback
    orders       the order state machine: OrderState, OrderView, Standing
    breaks       real-time break rules: BreakKind, Finding, Break
    ledger       clearing arithmetic as double-entry postings, and balances
    outputs      what the reconciler emits: StatusQuery (QueryReason), ReversalLink,
                 SuccessClaim, Outputs
    timers       per-partition watermarks and timers
    realtime     the real-time reconciler: Reconciler, ChannelTxnIndex
    messages     the snapshots published for storage and recovery
    pipeline     the stream topology run in memory (LocalPipeline), the partitioner
    matching     end-of-day matching beyond ids: tolerances, combined lines, scores
                 (MatchMethod)
    eod          end-of-day classification, the reference: EodClass
    clearing     what each merchant is owed for a business day
    suspense     suspense entries and write-offs, the rules
"""
