"""Unit checks of gotyledon_queue without a broker: the encoder and decoder
against the worked example of ../PROTOCOL.md (exact bytes), and the Client
against a scripted peer that replays that example on a real Unix socket.

    cd ipc/python && python3 -m unittest -v test_gotyledon_queue
"""

import os
import socket
import struct
import tempfile
import threading
import unittest

import gotyledon_queue as gq

def h(s):
    return bytes.fromhex(s.replace(" ", "").replace("\n", ""))

# The worked example of PROTOCOL.md, frame by frame.
HELLO = h("00 00 00 0d  01  47 54 59 51  00 01  05 77 6f 72 6b 72")
WELCOME = h("00 00 00 0b  81  00 01  00 10 00 00  00 0f ff c0")
PUT = h("00 00 00 18  02  00 00 00 01  ff ff ff ff  04 6a 6f 62 73  00 00 00 01  00 00 00 02 68 69")
RESULT1 = h("00 00 00 0c  82  00 00 00 01  00 00  00 00 00 01  00")
GET = h("00 00 00 13  03  00 00 00 02  00 00 03 e8  04 6a 6f 62 73  00 00 00 01  00")
ITEMS = h("00 00 00 1b  83  00 00 00 02  00 00 00 01  00 00 00 00 00 00 00 01  00 00 00 01  00 00 00 02 68 69")
ACK = h("00 00 00 11  04  00 00 00 03  00 00 00 01  00 00 00 00 00 00 00 01")
RESULT3 = h("00 00 00 0c  82  00 00 00 03  00 00  00 00 00 01  00")

# The worked example of CONSUME.
CONSUME = h("00 00 00 0f  07  00 00 00 04  04 6a 6f 62 73  00 00 00 02  00")
PUSHED = h("00 00 00 1b  83  00 00 00 04  00 00 00 01  00 00 00 00 00 00 00 02  00 00 00 01  00 00 00 02 68 69")
ACK5 = h("00 00 00 11  04  00 00 00 05  00 00 00 01  00 00 00 00 00 00 00 02")
RESULT5 = h("00 00 00 0c  82  00 00 00 05  00 00  00 00 00 01  00")
CANCEL4 = h("00 00 00 05  06  00 00 00 04")
CANCELLED4 = h("00 00 00 0c  82  00 00 00 04  00 0a  00 00 00 00  00")


# The worked example of tasks.
T_HELLO = h("00 00 00 0c  01  47 54 59 51  00 02  04 73 75 62 6d")
T_WELCOME = h("00 00 00 0b  81  00 02  00 10 00 00  00 0f ff c0")
T_SUBMIT1 = h("00 00 00 21  08  00 00 00 01  ff ff ff ff  04 6a 6f 62 73  00 00 00 01  00 00 00 00 00 00 00 07  00 00 00 03 32 2b 32")
T_RESULT1 = h("00 00 00 0c  82  00 00 00 01  00 00  00 00 00 01  00")
T_GET = h("00 00 00 13  03  00 00 00 01  00 00 03 e8  04 6a 6f 62 73  00 00 00 01  00")
T_REQUESTS = h("00 00 00 1c  84  00 00 00 01  00 00 00 01  00 00 00 00 00 00 00 01  00 00 00 01  00 00 00 03 32 2b 32")
T_REPLY = h("00 00 00 17  09  00 00 00 02  00 00 00 01  00 00 00 00 00 00 00 01  00  00 00 00 01 34")
T_RESULT2 = h("00 00 00 0c  82  00 00 00 02  00 00  00 00 00 01  00")
T_OUTCOMES7 = h("00 00 00 13  85  00 00 00 01  00 00 00 00 00 00 00 07  00  00 00 00 01 34")
T_SUBMIT3 = h("00 00 00 21  08  00 00 00 03  ff ff ff ff  04 6a 6f 62 73  00 00 00 01  00 00 00 00 00 00 00 08  00 00 00 03 33 2b 33")
T_RESULT3 = h("00 00 00 0c  82  00 00 00 03  00 00  00 00 00 01  00")
T_WITHDRAW = h("00 00 00 11  0a  00 00 00 04  00 00 00 01  00 00 00 00 00 00 00 08")
T_OUTCOMES8 = h("00 00 00 12  85  00 00 00 01  00 00 00 00 00 00 00 08  02  00 00 00 00")
T_RESULT4 = h("00 00 00 0c  82  00 00 00 04  00 00  00 00 00 01  00")


class Encoding(unittest.TestCase):
    def test_client_frames(self):
        self.assertEqual(gq.encode_hello("workr", 1), HELLO)
        self.assertEqual(gq.encode_put(1, gq.WAIT_FOREVER, "jobs", [b"hi"]), PUT)
        self.assertEqual(gq.encode_get(2, 1000, "jobs", 1, False), GET)
        self.assertEqual(gq.encode_ack(3, [1]), ACK)
        self.assertEqual(gq.encode_ack(3, [1], nack=True), b"\x00\x00\x00\x11\x05" + ACK[5:])
        self.assertEqual(gq.encode_get(2, 0, "jobs", 7, True)[-5:], b"\x00\x00\x00\x07\x01")
        self.assertEqual(gq.encode_cancel(9), h("00 00 00 05 06 00 00 00 09"))
        self.assertEqual(gq.encode_consume(4, "jobs", 2), CONSUME)
        self.assertEqual(gq.encode_ack(5, [2]), ACK5)
        self.assertEqual(gq.encode_cancel(4), CANCEL4)

    def test_broker_frames(self):
        self.assertEqual(gq.decode(WELCOME[4], WELCOME[5:]), ("WELCOME", 1, 1 << 20, (1 << 20) - 64))
        self.assertEqual(gq.decode(RESULT1[4], RESULT1[5:]), ("RESULT", 1, 0, 1, ""))
        self.assertEqual(gq.decode(ITEMS[4], ITEMS[5:]), ("ITEMS", 2, [(1, 1, b"hi")]))
        fatal = h("ff 00 08 03 6e 6f 21")
        self.assertEqual(gq.decode(fatal[0], fatal[1:]), ("FATAL", 8, "no!"))

    def test_bad_broker_frames(self):
        for ftype, body in [(0x81, WELCOME[5:] + b"x"), (0x82, RESULT1[5:-1]), (0x83, ITEMS[5:-1]), (0x99, b"")]:
            with self.assertRaises(gq.ProtocolError):
                gq.decode(ftype, body)

    def test_task_frames(self):
        self.assertEqual(gq.encode_hello("subm"), T_HELLO)
        self.assertEqual(gq.encode_hello("workr", 1), HELLO)
        self.assertEqual(gq.encode_submit(1, gq.WAIT_FOREVER, "jobs", [(7, b"2+2")]), T_SUBMIT1)
        self.assertEqual(gq.encode_reply(2, [(1, gq.DONE, b"4")]), T_REPLY)
        self.assertEqual(gq.encode_withdraw(4, [8]), T_WITHDRAW)
        self.assertEqual(gq.decode(T_REQUESTS[4], T_REQUESTS[5:]), ("REQUESTS", 1, [(1, 1, b"2+2")]))
        self.assertEqual(gq.decode(T_OUTCOMES7[4], T_OUTCOMES7[5:]), ("OUTCOMES", None, [(7, 0, b"4")]))
        self.assertEqual(gq.decode(T_OUTCOMES8[4], T_OUTCOMES8[5:]), ("OUTCOMES", None, [(8, 2, b"")]))
        with self.assertRaises(gq.ProtocolError):
            gq.decode(T_OUTCOMES7[4], T_OUTCOMES7[5:-1])

    def test_timeouts(self):
        self.assertEqual(gq._timeout_ms(None), 0xFFFFFFFF)
        self.assertEqual(gq._timeout_ms(0), 0)
        self.assertEqual(gq._timeout_ms(1), 1000)
        self.assertEqual(gq._timeout_ms(0.0001), 1)
        self.assertEqual(gq._timeout_ms(1e9), 0xFFFFFFFE)

    def test_errors(self):
        e = gq.error_for(3, 'no queue "x"', 0)
        self.assertIsInstance(e, gq.NoSuchQueue)
        self.assertEqual((e.status, e.message), (3, 'no queue "x"'))
        self.assertIsInstance(gq.error_for(1), gq.Timeout)
        self.assertIsInstance(gq.error_for(7), gq.ProtocolError)
        self.assertIsInstance(gq.error_for(12), gq.Draining)
        self.assertEqual(gq.STATUS_NAMES[12], "DRAINING")
        self.assertIsInstance(gq.error_for(99), gq.QueueError)
        self.assertTrue(all(issubclass(c, gq.QueueError) for c in (gq.Closed, gq.Refused, gq.Cancelled)))

    def test_long_name(self):
        with self.assertRaises(ValueError):
            gq.encode_get(1, 0, "q" * 256)


class ScriptedPeer(unittest.TestCase):
    """The Client against a peer that expects exact bytes and answers with exact bytes."""

    def serve(self, script):
        d = tempfile.TemporaryDirectory()
        self.addCleanup(d.cleanup)
        path = os.path.join(d.name, "q.sock")
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ls.bind(path)
        ls.listen(1)
        self.failures = []

        def run():
            conn, _ = ls.accept()
            with conn, conn.makefile("rb") as f:
                for expect, answer in script:
                    if expect is not None:
                        got = f.read(len(expect))
                        if got != expect:
                            self.failures.append((expect.hex(" "), got.hex(" ")))
                            return
                    if answer is None:
                        return  # hang up
                    if answer:
                        conn.sendall(answer)
                f.read()  # until the client closes
        self.addCleanup(ls.close)
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        return path

    def test_worked_example(self):
        path = self.serve([(HELLO, WELCOME), (PUT, RESULT1), (GET, ITEMS), (ACK, RESULT3)])
        with gq.Client.connect(path, timeout=5, name="workr", version=1) as c:
            self.assertEqual((c.max_frame, c.max_item), (1 << 20, (1 << 20) - 64))
            c.put("jobs", b"hi")
            d = c.get("jobs", timeout=1)
            self.assertEqual((d.queue, d.id, d.deliveries, d.body), ("jobs", 1, 1, b"hi"))
            self.assertEqual(d.ack(), 1)
        self.thread.join(5)
        self.assertEqual(self.failures, [])

    def test_consume_worked_example(self):
        path = self.serve([(HELLO, WELCOME), (PUT, RESULT1), (GET, ITEMS), (ACK, RESULT3),
                           (CONSUME, PUSHED), (ACK5 + CANCEL4, RESULT5 + CANCELLED4)])
        with gq.Client.connect(path, timeout=5, name="workr", version=1) as c:
            c.put("jobs", b"hi")
            c.get("jobs", timeout=1).ack()
            s = c.consume("jobs", prefetch=2)
            d = s.next(timeout=1)
            self.assertEqual((d.queue, d.id, d.deliveries, d.body), ("jobs", 2, 1, b"hi"))
            d.ack()           # queued: nothing written yet
            s.close()         # the ack goes out, then CANCEL
            with self.assertRaises(gq.Cancelled):
                s.next(timeout=1)
            self.assertEqual(list(s), [])  # iteration ends once closed
        self.thread.join(5)
        self.assertEqual(self.failures, [])

    def test_task_worked_example(self):
        # The submitter's side, then the worker's, each against the peer.
        path = self.serve([(T_HELLO, T_WELCOME), (T_SUBMIT1, T_RESULT1 + T_OUTCOMES7),
                           (T_SUBMIT3, T_RESULT3), (T_WITHDRAW, T_OUTCOMES8 + T_RESULT4)])
        with gq.Client.connect(path, timeout=5, name="subm") as c:
            c._tags, c._ids = iter([7, 8]), iter([1, 3, 4])
            f = c.submit("jobs", b"2+2")
            self.assertEqual(f.result(timeout=1), b"4")
            g = c.submit("jobs", b"3+3")
            self.assertTrue(g.cancel())
            with self.assertRaises(gq.Cancelled):
                g.result(timeout=1)
        self.thread.join(5)
        self.assertEqual(self.failures, [])
        worker_hello = gq.encode_hello("workr")
        path = self.serve([(worker_hello, T_WELCOME), (T_GET, T_REQUESTS), (T_REPLY, T_RESULT2)])
        with gq.Client.connect(path, timeout=5, name="workr") as c:
            c._ids = iter([1, 2])
            d = c.get("jobs", timeout=1)
            self.assertTrue(d.request)
            self.assertEqual(d.body, b"2+2")
            self.assertEqual(d.reply(b"4"), 1)
        self.thread.join(5)
        self.assertEqual(self.failures, [])

    def test_consume_next_timeout(self):
        path = self.serve([(HELLO, WELCOME), (CONSUME, b"")])
        with gq.Client.connect(path, timeout=5, name="workr", version=1) as c:
            c._ids = iter(range(4, 100))  # the consume gets id 4, as in the example
            s = c.consume("jobs", prefetch=2)
            with self.assertRaises(gq.Timeout):
                s.next(timeout=0.1)

    def test_replies_matched_by_id(self):
        # A stray ITEMS (id 77) before the awaited reply is NACKed, then the
        # RESULT for id 1 is taken.
        stray = gq._frame(gq.ITEMS, struct.pack(">IIQII", 77, 1, 5, 1, 1) + b"z")
        nack5 = gq.encode_ack(0, [5], nack=True)
        path = self.serve([(HELLO, WELCOME), (PUT, stray + RESULT1), (nack5, b"")])
        with gq.Client.connect(path, timeout=5, name="workr", version=1) as c:
            c.put("jobs", b"hi")
        self.thread.join(5)
        self.assertEqual(self.failures, [])

    def test_status_and_fatal(self):
        timeout = gq._frame(gq.RESULT, struct.pack(">IHIB", 1, 1, 0, 0))
        fatal = gq._frame(gq.FATAL, struct.pack(">HB", 9, 3) + b"bye")
        get1 = gq.encode_get(1, 0, "jobs")
        path = self.serve([(HELLO, WELCOME), (get1, timeout), (gq.encode_get(2, 0, "jobs"), fatal)])
        c = gq.Client.connect(path, timeout=5, name="workr", version=1)
        with self.assertRaises(gq.Timeout):
            c.get("jobs", timeout=0)
        with self.assertRaises(gq.ShuttingDown) as cm:
            c.get("jobs", timeout=0)
        self.assertEqual(cm.exception.message, "bye")
        with self.assertRaises(gq.Closed) as cm:
            c.get("jobs", timeout=0)
        self.assertEqual(cm.exception.message, "bye")
        c.close()
        c.close()
        self.assertEqual(self.failures, [])

    def test_close_wakes_waiting_call(self):
        # Either close() wakes the waiting get, or it comes first: Closed both ways.
        path = self.serve([(HELLO, WELCOME), (gq.encode_get(1, gq.WAIT_FOREVER, "jobs"), b"")])
        c = gq.Client.connect(path, timeout=5, name="workr", version=1)
        t = threading.Timer(0.1, c.close)
        t.start()
        with self.assertRaises(gq.Closed):
            c.get("jobs")
        t.join()
        with self.assertRaises(gq.Closed):
            c.put("jobs", b"x")

    def test_broker_gone(self):
        path = self.serve([(HELLO, WELCOME), (gq.encode_get(1, 0, "jobs"), None)])  # None: hang up
        c = gq.Client.connect(path, timeout=5, name="workr", version=1)
        with self.assertRaises(gq.Closed):
            c.get("jobs", timeout=0)
        with self.assertRaises(gq.Closed):
            c.get("jobs", timeout=0)
        c.close()

    def test_too_large_client_side(self):
        path = self.serve([(HELLO, WELCOME)])
        with gq.Client.connect(path, timeout=5, name="workr", version=1) as c:
            with self.assertRaises(gq.TooLarge):
                c.put("jobs", b"x" * ((1 << 20) - 63))
            with self.assertRaises(gq.TooLarge):  # fits max_item but not max_frame with a long name
                c.put("j" * 255, b"x" * ((1 << 20) - 64))

    def test_connect_errors(self):
        with self.assertRaises(gq.Closed):
            gq.Client.connect(os.path.join(tempfile.mkdtemp(), "none.sock"), timeout=1)


class Notify(unittest.TestCase):
    def test_ready_and_status_reach_the_notify_socket(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "notify")
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
                srv.bind(path)
                old = os.environ.get("NOTIFY_SOCKET")
                os.environ["NOTIFY_SOCKET"] = path
                try:
                    self.assertTrue(gq.status("loading"))
                    self.assertTrue(gq.ready())
                finally:
                    if old is None:
                        del os.environ["NOTIFY_SOCKET"]
                    else:
                        os.environ["NOTIFY_SOCKET"] = old
                self.assertEqual(srv.recv(4096), b"STATUS=loading")
                self.assertEqual(srv.recv(4096), b"READY=1")

    def test_without_a_socket_nothing_is_sent(self):
        old = os.environ.pop("NOTIFY_SOCKET", None)
        try:
            self.assertFalse(gq.ready())
        finally:
            if old is not None:
                os.environ["NOTIFY_SOCKET"] = old


if __name__ == "__main__":
    unittest.main()
