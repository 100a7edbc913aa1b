// Shared helpers for tests over the real CURVE transport: fresh key pairs and
// server / client options on 127.0.0.1. Needs hanse_protocol (and libzmq).
#pragma once

#include <zmq.h>

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "protocol/transport.h"

namespace hanse::testing {

// A CURVE key pair, both halves Z85 (40 characters).
struct CurveKeys {
  std::string pub, sec;
};

// A fresh key pair from libzmq (a test failure, and empty keys, if it fails).
inline CurveKeys NewCurveKeys() {
  char pub[41] = {}, sec[41] = {};
  EXPECT_EQ(zmq_curve_keypair(pub, sec), 0);
  return CurveKeys{pub, sec};
}

// A server with key pair `own`, admitting `principals`, on a port of 127.0.0.1
// the system picks (read it back from Server::endpoint()).
inline proto::ServerOptions CurveServerOptions(const CurveKeys& own, std::vector<proto::Principal> principals) {
  proto::ServerOptions o;
  o.endpoint = "tcp://127.0.0.1:0";
  o.secret_key = own.sec;
  o.public_key = own.pub;
  o.principals = std::move(principals);
  return o;
}

// A client of `endpoint` with key pair `own`, trusting `server_public_key`.
inline proto::ClientOptions CurveClientOptions(const std::string& endpoint, const std::string& server_public_key,
                                               const CurveKeys& own) {
  proto::ClientOptions o;
  o.endpoint = endpoint;
  o.server_public_key = server_public_key;
  o.secret_key = own.sec;
  o.public_key = own.pub;
  return o;
}

}  // namespace hanse::testing
