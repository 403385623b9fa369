// The hand-written declarations (static/*.d.ts) against the ones TypeScript
// generates from the modules' JSDoc (js/build/declarations, made by
// tsconfig.declarations.json first): the same exports, and every declared
// member exists in the code.  Compiled by `make lint`; a line fails to
// compile when the two drift apart.

import type * as DeclaredCalls from "../../static/rtcsignal-calls.js";
import type * as Declared from "../../static/rtcsignal.js";
import type * as ImplementedCalls from "../build/declarations/rtcsignal-calls.js";
import type * as Implemented from "../build/declarations/rtcsignal.js";

/** The names of `A` missing from `B` (never when there are none). */
type Missing<A, B> = Exclude<keyof A, keyof B>;
type Nothing<T extends never> = T;

// Every value the declarations promise is exported, and every value
// exported is declared (types-only names aside).
export type Exports = Nothing<Missing<typeof Declared, typeof Implemented>>;
export type Undeclared = Nothing<Missing<typeof Implemented, typeof Declared>>;
export type CallsExports = Nothing<Missing<typeof DeclaredCalls, typeof ImplementedCalls>>;
export type CallsUndeclared = Nothing<
  Missing<typeof ImplementedCalls, typeof DeclaredCalls>
>;

// Every declared member of the classes exists (the code's `_` members are
// its own business), and every public member of `Signaling` is declared.
export type SignalingMembers = Nothing<Missing<Declared.Signaling, Implemented.Signaling>>;
export type SignalingUndeclared = Nothing<Missing<Implemented.Signaling, Declared.Signaling>>;
export type BackoffMembers = Nothing<Missing<Declared.Backoff, Implemented.Backoff>>;
export type CallsMembers = Nothing<Missing<DeclaredCalls.Calls, ImplementedCalls.Calls>>;
export type CallsUndeclaredMembers = Nothing<Missing<ImplementedCalls.Calls, DeclaredCalls.Calls>>;
export type CallMembers = Nothing<Missing<DeclaredCalls.Call, ImplementedCalls.Call>>;
export type Timings = Nothing<Missing<typeof DeclaredCalls.TIMINGS, typeof ImplementedCalls.TIMINGS>>;

// The same values where the declarations are exact.
export const errors: typeof Declared.ERRORS = {} as typeof Implemented.ERRORS;
export const backoff: Declared.Backoff = {} as Implemented.Backoff;
