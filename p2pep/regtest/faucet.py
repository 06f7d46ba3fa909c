"""The harness's faucet: btcd mines to its key; it spends coinbase outputs to any address.

Signed in Python (python-bitcoinlib, P2WPKH), sent with btcd's sendrawtransaction.
Which coinbases are unspent is read from the chain (``gettxout``), so any process
attached to the network can use the faucet without shared bookkeeping.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import bitcoin
from bitcoin.core import (
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxOut,
    COutPoint,
    CTxInWitness,
    CTxWitness,
    Hash160,
    b2x,
    lx,
)
from bitcoin.core.script import (
    OP_0,
    OP_CHECKSIG,
    OP_DUP,
    OP_EQUALVERIFY,
    OP_HASH160,
    SIGHASH_ALL,
    SIGVERSION_WITNESS_V0,
    CScript,
    CScriptWitness,
    SignatureHash,
)
from bitcoin.wallet import CBitcoinAddress, CBitcoinSecret, P2WPKHBitcoinAddress

from p2pep.regtest.btcd import Btcd

bitcoin.SelectParams("regtest")

COIN = 100_000_000
COINBASE_MATURITY = 100
FEE_SAT = 2_000  # ~14 sat/vB for a 1-in 2-out P2WPKH tx


class FaucetError(RuntimeError):
    pass


@dataclass
class Faucet:
    secret_hex: str
    # btcd's gettxout does not see mempool spends: remember ours until they confirm
    _spent: set[str] = field(default_factory=set, repr=False)

    @classmethod
    def from_seed(cls, seed: str) -> Faucet:
        return cls(hashlib.sha256(b"p2pep-faucet:" + seed.encode()).hexdigest())

    @property
    def key(self) -> CBitcoinSecret:
        return CBitcoinSecret.from_secret_bytes(bytes.fromhex(self.secret_hex))

    @property
    def script_pubkey(self) -> CScript:
        return CScript([OP_0, Hash160(self.key.pub)])

    @property
    def address(self) -> str:
        return str(P2WPKHBitcoinAddress.from_scriptPubKey(self.script_pubkey))

    async def _mature_coinbase(self, btcd: Btcd, at_least: int) -> tuple[str, int]:
        tip = await btcd.height()
        for h in range(1, tip - COINBASE_MATURITY + 1):
            block = await btcd.call("getblock", await btcd.call("getblockhash", h))
            txid = block["tx"][0]
            if txid in self._spent:
                continue
            out = await btcd.call("gettxout", txid, 0, True)
            if out and round(out["value"] * COIN) >= at_least + FEE_SAT:
                return txid, round(out["value"] * COIN)
        raise FaucetError(f"no mature unspent coinbase of {at_least} sat left below height {tip - COINBASE_MATURITY}")

    async def send(self, btcd: Btcd, address: str, sats: int) -> str:
        """Pay ``sats`` to ``address`` (any segwit v0 or legacy regtest address); returns txid."""
        return await self.send_many(btcd, {address: sats})

    async def send_many(self, btcd: Btcd, payments: dict[str, int]) -> str:
        """One transaction paying each address its amount, from one coinbase output."""
        total = sum(payments.values())
        txid, value = await self._mature_coinbase(btcd, total)
        outs = [CMutableTxOut(v, CBitcoinAddress(a).to_scriptPubKey()) for a, v in payments.items()]
        change = value - total - FEE_SAT
        if change > 1_000:
            outs.append(CMutableTxOut(change, self.script_pubkey))
        tx = CMutableTransaction([CMutableTxIn(COutPoint(lx(txid), 0))], outs)
        key = self.key
        script_code = CScript([OP_DUP, OP_HASH160, Hash160(key.pub), OP_EQUALVERIFY, OP_CHECKSIG])
        sighash = SignatureHash(script_code, tx, 0, SIGHASH_ALL, amount=value, sigversion=SIGVERSION_WITNESS_V0)
        sig = key.sign(sighash) + bytes([SIGHASH_ALL])
        tx.wit = CTxWitness([CTxInWitness(CScriptWitness([sig, key.pub]))])
        sent = str(await btcd.call("sendrawtransaction", b2x(tx.serialize())))
        self._spent.add(txid)
        return sent
