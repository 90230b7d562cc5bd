"""The receiving half of reliable multicast: gaps, NACK timers, hold-back, gap events. Sans-I/O.

Rules of this room: everything a reliable receiver decides lives here, driven by plain calls
with the time as an argument (tests use a fake clock and a seeded random generator); the shell
(:mod:`chatcast._mcast_protocols`) feeds it messages and control datagrams, sends what it
appends to :attr:`RepairReceiver.outgoing`, queues what it appends to
:attr:`RepairReceiver.ready`, and calls :meth:`RepairReceiver.tick` at
:meth:`RepairReceiver.deadline`.

Per data sender (sender id and epoch) it keeps ``next``, the first sequence number not yet
delivered or given up, and ``top``, the highest one known to exist (from data, heartbeats and
leave notices). A sequence number between them that has not arrived is *missing*: after a
random delay in ``nack_delay`` it is asked for in a NACK, unless another receiver's NACK for
it is heard first (SRM's suppression, Floyd et al. 1997); then it waits ``repair_wait``
(doubling per try) for the repair and asks again, up to ``max_tries`` rounds. A missing
message that can no longer come (tries exhausted, older than the sender's window, the sender
left, or pushed out by the ``max_held`` bound) is *given up*: the receiver gets one
``Message(kind="gap", sender=<sender id>, missed=n)`` for each run of them, in its place in
the order, and goes on.

A receiver that joins after a sender started asks for nothing sent before it heard that
sender; a receiver that was there first asks from sequence number 1. Which of the two is
decided from the sender's start time as carried in its datagrams, measured against the
sender's own clock (the offset between the sender's stamp and this host's clock on arrival),
so the hosts' clocks need not agree.
"""

from __future__ import annotations

import collections
import heapq
import math
import random
from typing import Final

from .reliable_options import ReliableOptions
from .reliable_sender import TokenBucket
from .reliable_wire import LEAVE, MAX_NACK_RANGES, MAX_NACK_SEQS, NACK, Control, ControlCodec
from .wire import GAP, Message

__all__ = ["MAX_SENDERS", "RepairReceiver"]

#: Senders a receiver tracks; the least recently heard is given up and forgotten first.
MAX_SENDERS: Final = 1024
_NEVER: Final = math.inf
# A sender that started up to this long before this receiver joined counts as started after
# it: the two may start together (a script starting both), and its first messages may
# have been sent after the join. Asking for them costs little.
_JOIN_TOLERANCE_MS: Final = 100.0
# A missing message is given up after this many times max_tries rounds of waiting for a
# repair that another receiver's NACK asked for.
_SUPPRESSED_ROUNDS: Final = 4


class _Sender:
    """A receiver's view of one data sender."""

    __slots__ = (
        "abandoned",
        "arrived",
        "epoch",
        "held",
        "leave_at",
        "missing",
        "name",
        "next",
        "sender",
        "timer",
        "top",
    )

    def __init__(self, sender: str, epoch: int, next_seq: int) -> None:
        self.sender = sender
        self.epoch = epoch
        self.next = next_seq
        self.top = next_seq - 1
        self.name: str | None = None
        #: Arrived above ``next``: the message (ordered, held) or ``None`` (delivered).
        self.arrived: dict[int, Message | None] = {}
        #: Missing: sequence number -> [when to ask next, rounds asked, when noticed,
        #: rounds suppressed by others' NACKs].
        self.missing: dict[int, list[float]] = {}
        #: Given up, but still above ``next`` (released as a gap event in order).
        self.abandoned: set[int] = set()
        self.leave_at = _NEVER
        self.timer = _NEVER
        #: Messages held back (values of ``arrived`` that are not ``None``).
        self.held = 0


class RepairReceiver:
    """Tracks every reliable sender heard, asks for what is missing, delivers in order.

    Args:
        instance: This channel's id (its own NACKs, looped back, are not suppression).
        options: Timers and bounds.
        codec: Encodes the NACKs.
        ordered: Deliver each sender's messages in order (holding back those after a
            gap), or as they come (still each once).
        joined: When this channel joined the group (seconds since the Unix epoch).
        rng: The random generator for the NACK delays.
        max_senders: Senders to track at most.

    Attributes:
        ready: Messages and gap events to deliver, in order; the shell queues and clears it.
        outgoing: NACK datagrams for the repair port; the shell sends and clears it.
        nacks_sent: NACK datagrams sent.
        nacked: Sequence numbers asked for, over all NACKs.
        suppressed: Sequence numbers not asked for (this round) because another receiver's
            NACK asked first.
        repairs_received: Repairs that brought a message this receiver was missing.
        duplicates: Messages that arrived again (a repair for someone else, a late one).
        gaps: Gap events delivered.
        missed: Messages given up, over all gap events.
        held: Messages held back now, waiting for an earlier one.
    """

    def __init__(
        self,
        *,
        instance: str,
        options: ReliableOptions,
        codec: ControlCodec,
        ordered: bool = True,
        joined: float,
        rng: random.Random | None = None,
        max_senders: int = MAX_SENDERS,
    ) -> None:
        self._instance = instance
        self._options = options
        self._codec = codec
        self._ordered = ordered
        self._joined_ms = joined * 1000
        self._random = (rng or random.Random()).uniform
        self._max_senders = max_senders
        self._senders: collections.OrderedDict[str, _Sender] = collections.OrderedDict()
        self._heap: list[tuple[float, int, str]] = []
        self._pushes = 0
        self._bucket = TokenBucket(options.nack_rate, options.nack_rate / 4)
        self.ready: list[Message] = []
        self.outgoing: list[bytes] = []
        self.nacks_sent = 0
        self.nacked = 0
        self.suppressed = 0
        self.repairs_received = 0
        self.duplicates = 0
        self.gaps = 0
        self.missed = 0
        self.held = 0
        #: Why messages were given up: rounds of giving up per reason ("tries": per message;
        #: "window", "left", "held", "span", "forgotten", "restarted": per run).
        self.given_up: dict[str, int] = {}

    # -- what the shell asks ----------------------------------------------------------

    def deadline(self) -> float:
        """When :meth:`tick` must run next (``inf``: nothing pending)."""
        heap = self._heap
        senders = self._senders
        while heap:
            when, _, key = heap[0]
            state = senders.get(key)
            if state is not None and state.timer == when:
                return when
            heapq.heappop(heap)  # superseded
        return _NEVER

    def missing(self) -> int:
        """Messages missing now, over all senders."""
        return sum(len(state.missing) for state in self._senders.values())

    # -- data -----------------------------------------------------------------------------

    def data(
        self,
        sender: str,
        epoch: int,
        since_ms: int,
        message: Message,
        now: float,
        *,
        repair: bool = False,
    ) -> Message | None:
        """Take a reliable sender's message; return it if it is to be delivered now.

        Messages that it releases (held back behind it) and gap events are appended to
        :attr:`ready`, after the one returned. ``None``: held back, or a duplicate.
        """
        seq = message.seq
        assert seq is not None  # the classifier gives reliable messages their number
        state = self._senders.get(sender)
        if state is None or state.epoch != epoch:
            if state is not None and epoch < state.epoch:
                self.duplicates += 1  # a leftover of an earlier life
                return None
            stamp = message.timestamp if message.timestamp is not None else now
            state = self._new(sender, epoch, since_ms, stamp * 1000, seq, now)
        else:
            self._senders.move_to_end(sender)
        state.name = message.sender
        if seq == state.next and seq > state.top:
            # The hot path: the next one, and nothing known beyond it: deliver at once.
            state.next = seq + 1
            state.top = seq
            if repair:
                self.repairs_received += 1
            return message
        return self._arrive(state, seq, message, now, repair)

    def _arrive(
        self, state: _Sender, seq: int, message: Message, now: float, repair: bool
    ) -> Message | None:
        if seq < state.next or seq in state.arrived:
            self.duplicates += 1
            return None
        if repair:
            self.repairs_received += 1
        state.abandoned.discard(seq)  # given up, but here after all: deliver it
        if seq > state.top:
            self._mark_missing(state, seq - 1, now)
            state.top = seq
        state.missing.pop(seq, None)
        if seq == state.next:
            state.next = seq + 1
            self._release(state)
            return message
        if not self._ordered:
            state.arrived[seq] = None
            return message
        state.arrived[seq] = message
        state.held += 1
        self.held += 1
        if self.held > self._options.max_held:
            self._unhold()
        return None

    def _new(
        self, sender: str, epoch: int, since_ms: int, stamp_ms: float, first: int, now: float
    ) -> _Sender:
        # Was this receiver there when the sender started? The sender's start, moved to this
        # host's clock by the offset between its stamp and our clock now.
        started_here = since_ms + (now * 1000 - stamp_ms)
        next_seq = 1 if started_here >= self._joined_ms - _JOIN_TOLERANCE_MS else first
        state = _Sender(sender, epoch, next_seq)
        old = self._senders.pop(sender, None)
        if old is not None:
            self._skip_to(
                old, old.top + 1, "restarted"
            )  # restarted: what the old life missed is gone
        self._senders[sender] = state
        if len(self._senders) > self._max_senders:
            _, forgotten = self._senders.popitem(last=False)
            self._skip_to(forgotten, forgotten.top + 1, "forgotten")
        return state

    def _mark_missing(self, state: _Sender, last: int, now: float) -> None:
        """Everything from ``state.top + 1`` to ``last`` is missing (the sender got ahead)."""
        first = state.top + 1
        if last < first:
            return
        span = self._options.max_held
        if last - state.next >= span:
            # A gap wider than we track: give up its oldest part at once.
            cutoff = last - span + 1
            self._skip_to(state, cutoff, "span")
            first = max(first, cutoff)
        low, high = self._options.nack_delay
        uniform = self._random
        missing = state.missing
        earliest = state.timer
        for seq in range(first, last + 1):
            due = now + uniform(low, high)
            missing[seq] = [due, 0, now, 0]
            earliest = min(earliest, due)
        state.top = max(state.top, last)
        self._schedule(state, earliest)

    # -- control ----------------------------------------------------------------------

    def control(self, control: Control, now: float) -> None:
        """Take a heartbeat, leave notice or another receiver's NACK."""
        if control.kind == NACK:
            if control.origin != self._instance:
                self._heard_nack(control, now)
            return
        state = self._senders.get(control.sender)
        if state is None or state.epoch != control.epoch:
            if state is not None and control.epoch < state.epoch:
                return
            state = self._new(
                control.sender,
                control.epoch,
                control.since_ms,
                control.time_ms,
                control.top + 1,
                now,
            )
        else:
            self._senders.move_to_end(control.sender)
        self._mark_missing(state, control.top, now)
        if control.low > state.next:
            self._skip_to(state, control.low, "window")  # older than the sender's window: gone
        if control.kind == LEAVE and state.leave_at == _NEVER:
            # The sender answers NACKs for linger_ms more; then nobody can repair.
            state.leave_at = now + control.linger_ms / 1000
            self._schedule(state, state.leave_at)

    def _heard_nack(self, control: Control, now: float) -> None:
        state = self._senders.get(control.sender)
        if state is None or state.epoch != control.epoch or not state.missing:
            return
        missing = state.missing
        wait = now + self._options.repair_wait
        for first, last in control.ranges:
            if last - first < len(missing):
                seqs = [seq for seq in range(first, last + 1) if seq in missing]
            else:
                seqs = [seq for seq in missing if first <= seq <= last]
            for seq in seqs:
                entry = missing[seq]
                if entry[0] < wait:
                    # Someone asked for it: wait for the repair that NACK brings. Counted
                    # apart from our own rounds (several receivers' NACKs for one message
                    # get one repair, so they must not use up our tries), but bounded too,
                    # or NACKs replayed by an outsider could keep us waiting for ever.
                    entry[0] = wait
                    entry[3] += 1
                    self.suppressed += 1

    # -- timers -----------------------------------------------------------------------

    def _schedule(self, state: _Sender, when: float) -> None:
        if when < state.timer:
            state.timer = when
            self._pushes += 1
            heapq.heappush(self._heap, (when, self._pushes, state.sender))

    def tick(self, now: float) -> None:
        """Ask for what is due, give up what cannot come; call at :meth:`deadline`."""
        heap, senders = self._heap, self._senders
        while heap and heap[0][0] <= now:
            when, _, key = heapq.heappop(heap)
            state = senders.get(key)
            if state is None or state.timer != when:
                continue
            state.timer = _NEVER
            self._fire(state, now)

    def _fire(self, state: _Sender, now: float) -> None:
        options = self._options
        if state.leave_at <= now:
            state.leave_at = _NEVER
            self._skip_to(state, state.top + 1, "left")  # the sender is gone: nobody can repair
            return
        missing = state.missing
        # Ask for everything due before our latest random delay, in one NACK; but not for
        # what was noticed less than the shortest delay ago (it may just be late).
        horizon = now + options.nack_delay[1]
        noticed = now - options.nack_delay[0]
        due = sorted(
            seq
            for seq, entry in missing.items()
            if entry[0] <= now or (entry[0] <= horizon and entry[2] <= noticed)
        )
        if due:
            if not self._bucket.take(now):
                later = self._bucket.ready_at(now)
                for seq in due:
                    missing[seq][0] = max(missing[seq][0], later)
            else:
                self._ask(state, due, now)
        earliest = min((entry[0] for entry in missing.values()), default=_NEVER)
        self._schedule(state, min(earliest, state.leave_at))

    def _ask(self, state: _Sender, due: list[int], now: float) -> None:
        options = self._options
        missing = state.missing
        ranges: list[tuple[int, int]] = []
        count = 0
        gave_up = False
        for seq in due:
            entry = missing[seq]
            entry[1] += 1
            if entry[1] > options.max_tries or entry[3] > _SUPPRESSED_ROUNDS * options.max_tries:
                del missing[seq]
                state.abandoned.add(seq)
                self.given_up["tries"] = self.given_up.get("tries", 0) + 1
                gave_up = True
                continue
            if count == MAX_NACK_SEQS or (
                len(ranges) == MAX_NACK_RANGES and ranges[-1][1] != seq - 1
            ):
                entry[1] -= 1
                entry[0] = now  # next time
                continue
            backoff = min(options.repair_wait * 2 ** (entry[1] - 1), options.max_backoff)
            entry[0] = now + backoff
            count += 1
            if ranges and ranges[-1][1] == seq - 1:
                ranges[-1] = (ranges[-1][0], seq)
            else:
                ranges.append((seq, seq))
        if ranges:
            self.outgoing.append(
                self._codec.encode(
                    Control(
                        NACK,
                        state.sender,
                        state.epoch,
                        int(now * 1000),
                        ranges=tuple(ranges),
                        origin=self._instance,
                    )
                )
            )
            self.nacks_sent += 1
            self.nacked += count
        if gave_up:
            self._release(state)

    # -- delivery and giving up -------------------------------------------------------

    def _release(self, state: _Sender) -> None:
        """Deliver what is now in order after ``next``; gap events for given-up runs."""
        arrived, abandoned, ready = state.arrived, state.abandoned, self.ready
        run = 0
        while True:
            seq = state.next
            if seq in arrived:
                if run:
                    self._gap(state, run)
                    run = 0
                message = arrived.pop(seq)
                if message is not None:
                    ready.append(message)
                    self.held -= 1
                    state.held -= 1
            elif seq in abandoned:
                abandoned.discard(seq)
                run += 1
            else:
                break
            state.next = seq + 1
        if run:
            self._gap(state, run)

    def _skip_to(self, state: _Sender, cutoff: int, why: str) -> None:
        """Give up everything below ``cutoff`` that has not arrived, and release in order."""
        if cutoff <= state.next:
            return
        if state.missing or cutoff > state.top + 1:
            self.given_up[why] = self.given_up.get(why, 0) + 1
        arrived = state.arrived
        position = state.next
        for seq in sorted(seq for seq in arrived if seq < cutoff):
            if seq > position:
                self._gap(state, seq - position)
            message = arrived.pop(seq)
            if message is not None:
                self.ready.append(message)
                self.held -= 1
                state.held -= 1
            position = seq + 1
        if cutoff > position:
            self._gap(state, cutoff - position)
        for seq in [seq for seq in state.missing if seq < cutoff]:
            del state.missing[seq]
        state.abandoned = {seq for seq in state.abandoned if seq >= cutoff}
        state.next = cutoff
        state.top = max(state.top, cutoff - 1)
        self._release(state)

    def _unhold(self) -> None:
        """Over ``max_held``: give up the oldest gaps of the senders holding the most, until
        an eighth of the room is free again (so that this scan is not made per message)."""
        target = self._options.max_held - self._options.max_held // 8
        while self.held > target:
            state = max(self._senders.values(), key=lambda s: s.held)
            first = min(seq for seq, m in state.arrived.items() if m is not None)
            self._skip_to(state, first, "held")

    def _gap(self, state: _Sender, count: int) -> None:
        self.gaps += 1
        self.missed += count
        who = state.name or state.sender
        self.ready.append(
            Message(
                text=f"{count} message(s) from {who} could not be repaired",
                sender=state.sender,
                kind=GAP,
                missed=count,
            )
        )
