// Receives GELF over UDP with graygelf's server (chunked, gzip, zlib or plain) on
// 127.0.0.1:PORT and prints every message as one JSON line on stdout. The first line is
// {"listening":PORT} once the socket is bound. Errors go to stderr.
'use strict'
const GrayGelfServer = require('graygelf/server')

const port = Number(process.argv[2])
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  process.stderr.write('usage: node receiver.js PORT\n')
  process.exit(2)
}
const server = new GrayGelfServer()
server.on('message', (m) => process.stdout.write(JSON.stringify(m) + '\n'))
server.on('error', (e) => process.stderr.write('error: ' + e + '\n'))
server.listen(port, '127.0.0.1')
server._udp.on('listening', () => process.stdout.write(JSON.stringify({ listening: port }) + '\n'))
// Ends when stdin closes, so the test's end (or death) ends the receiver too.
process.stdin.resume()
process.stdin.on('end', () => process.exit(0))
